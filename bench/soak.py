"""Soak: the gateway under a steady load for a long time, the broker restarted every few minutes.

    python -m bench.soak --minutes 10          # the default bound; hours work too
    python -m bench.soak --minutes 120 --rate 5 --restart-minutes 5 --png soak.png

One TCP, one RTSP and one HTTP simulated camera send `--rate` reads/s each to a
gateway run as its own process (`python -m gateway run -c ...`), which reaches a
real mosquitto through a proxy. Every `--restart-minutes` the broker is
stopped and started again (the gateway is kept out until the counting
subscriber has subscribed again, so the subscriber cannot miss what the
gateway publishes). Every 10 s it samples the gateway's RSS and open file
descriptors (from /proc), its outbox depth and its asyncio task count (from
/metrics: lpr_outbox_events, lpr_asyncio_tasks), and prints them as a table.

It fails (exit 1) when an event is lost (TCP/RTSP: every read sent; HTTP: every
read answered 200), when the outbox does not drain at the end, or when RSS or
open fds keep growing: the last third of the samples above the middle third by
more than 15% and 15 MB (RSS), by more than 8 fds, or by more than 10 tasks. Writes a PNG plot when
matplotlib is installed.

The cameras, subscriber and ledger are the fault suite's (tests/faults/harness.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from gateway.broker import MosquittoProcess, free_port
from tests.faults.harness import (
    HTTP_CAMERA,
    RTSP_CAMERA,
    TCP_CAMERA,
    CountingCollector,
    HttpLoad,
    Ledger,
    event_id,
    plate_key,
    sha,
    three_cameras,
)
from tests.faults.proxy import GateProxy
from tests.helpers import stop_process

SAMPLE_SECONDS = 10.0
RSS_GROWTH_FRACTION = 0.15
RSS_GROWTH_MB = 15.0
FD_GROWTH = 8
TASK_GROWTH = 10


@dataclass
class Sample:
    t: float
    rss_mb: float
    fds: int
    outbox: float
    tasks: float
    sent: int
    received: int
    broker_restarts: int


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _scrape(metrics_port: int) -> tuple[float, float]:
    """(outbox events, asyncio tasks) from the gateway's /metrics; NaN if unreachable."""
    wanted = {"lpr_outbox_events": float("nan"), "lpr_asyncio_tasks": float("nan")}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                name, _, value = line.partition(" ")
                if name in wanted:
                    wanted[name] = float(value)
    except OSError:
        pass
    return wanted["lpr_outbox_events"], wanted["lpr_asyncio_tasks"]


class Expected:
    """Keys of what the cameras handed over, taken incrementally; the simulators'
    copies of the images are dropped once keyed, so the soak's own memory stays flat."""

    def __init__(self) -> None:
        self.keys: dict[str, list[str]] = {TCP_CAMERA: [], RTSP_CAMERA: [], HTTP_CAMERA: []}
        self._tcp = self._rtsp = self._http = 0

    def take(self, tcp: Any, rtsp: Any, http: HttpLoad) -> None:
        reads = tcp.sent_reads
        for i in range(self._tcp, len(reads)):
            plate, jpeg, _ = reads[i]
            self.keys[TCP_CAMERA].append(sha(jpeg))
            reads[i] = (plate, b"", b"")
        self._tcp = len(reads)
        notes: deque[Any] = rtsp.sent_reads
        for i in range(self._rtsp, len(notes)):
            read = notes[i]
            if read.sessions:
                self.keys[RTSP_CAMERA].append(sha(read.picture))
            notes[i] = replace(read, picture=b"", document=b"")
        self._rtsp = len(notes)
        sent = http.sim.sent
        for i in range(self._http, len(sent)):
            request = sent[i]
            if request.status == 200 and isinstance(request.reply, dict):
                self.keys[HTTP_CAMERA].append(str(request.reply["id"]))
            request.read = None
        self._http = len(sent)

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.keys.values())

    def ledger(self) -> Ledger:
        return Ledger(
            expected={cam: list(keys) for cam, keys in self.keys.items()},
            key_of={TCP_CAMERA: plate_key, RTSP_CAMERA: plate_key, HTTP_CAMERA: event_id},
        )


def _write_config(
    tmp: Path, broker_port: int, entries: list[dict[str, Any]]
) -> tuple[Path, int, int]:
    http_port, metrics_port = free_port(), free_port()
    document = {
        "mqtt": {
            "url": f"mqtt://127.0.0.1:{broker_port}",
            "client_id": "soak-gateway",
            "keepalive_seconds": 10,
        },
        "outbox": {"path": str(tmp / "outbox.sqlite3")},
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
        "http": {"listen": f"127.0.0.1:{http_port}"},
        "dedup": {"window_seconds": 0},
        "log_level": "WARNING",
        "cameras": entries,
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True))
    return path, http_port, metrics_port


async def soak(minutes: float, rate: float, restart_minutes: float, png: Path | None) -> int:
    broker = MosquittoProcess()
    broker.start()
    proxy = GateProxy(broker.host, broker.port)
    await proxy.start()
    samples: list[Sample] = []
    restarts = 0
    expected = Expected()
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="lpr-soak-") as tmp_name:
        tmp = Path(tmp_name)
        with CountingCollector(broker.host, broker.port, topics=("lpr/+/event",)) as collector:
            async with three_cameras(rate=rate, seed=31) as cams:
                config, http_port, metrics_port = _write_config(tmp, proxy.port, cams.entries())
                log = (tmp / "gateway.log").open("ab")
                gateway = subprocess.Popen(  # noqa: ASYNC220 - returns at once
                    [sys.executable, "-m", "gateway", "run", "-c", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                )
                try:
                    await _wait_listening(http_port)
                    async with HttpLoad(http_port, rate=rate, seed=37) as http:
                        start = time.monotonic()
                        end = start + minutes * 60
                        next_restart = start + restart_minutes * 60
                        next_sample = start
                        print(_header(), flush=True)
                        while time.monotonic() < end:
                            now = time.monotonic()
                            if now >= next_restart:
                                restarts += 1
                                proxy.close_gate()
                                await asyncio.to_thread(broker.stop)
                                await asyncio.to_thread(broker.start)
                                await collector.until_connects(restarts + 1, timeout=30)
                                proxy.open_gate()
                                next_restart += restart_minutes * 60
                            if now >= next_sample:
                                expected.take(cams.tcp, cams.rtsp, http)
                                outbox, tasks = await asyncio.to_thread(_scrape, metrics_port)
                                sample = Sample(
                                    t=now - start,
                                    rss_mb=_rss_mb(gateway.pid),
                                    fds=_fds(gateway.pid),
                                    outbox=outbox,
                                    tasks=tasks,
                                    sent=expected.total,
                                    received=len(collector.arrival),
                                    broker_restarts=restarts,
                                )
                                samples.append(sample)
                                print(_row(sample), flush=True)
                                next_sample += SAMPLE_SECONDS
                            if gateway.poll() is not None:
                                problems.append(f"the gateway exited with {gateway.returncode}")
                                break
                            await asyncio.sleep(0.2)
                        await http.stop()
                        await cams.tcp.stop()
                        await cams.rtsp.stop()
                        expected.take(cams.tcp, cams.rtsp, http)
                    book = expected.ledger()
                    with contextlib.suppress(AssertionError):  # reported below
                        await collector.until(
                            lambda _: book.report(collector.events()).total_lost == 0, timeout=60
                        )
                    report = book.report(collector.events())
                    # The depth gauge follows the broker's acks (flushed every 20 ms):
                    # give it a moment to catch up with the last deliveries.
                    for _ in range(25):
                        depth, tasks = await asyncio.to_thread(_scrape, metrics_port)
                        if depth == 0:
                            break
                        await asyncio.sleep(0.2)
                    final = Sample(
                        t=time.monotonic() - start,
                        rss_mb=_rss_mb(gateway.pid),
                        fds=_fds(gateway.pid),
                        outbox=depth,
                        tasks=tasks,
                        sent=report.total_sent,
                        received=report.total_sent - report.total_lost,
                        broker_restarts=restarts,
                    )
                    print(_row(final) + "  (after the drain)", flush=True)
                finally:
                    stop_process(gateway)
                    log.close()
    await proxy.close()
    broker.close()
    print(report.line(f"soak {minutes:g} min, broker restarted {restarts} times"))
    if report.total_lost:
        problems.append(f"{report.total_lost} events lost")
    if report.out_of_order and any(report.out_of_order.values()):
        problems.append(f"out of order: {report.out_of_order}")
    if final.outbox != 0:
        problems.append(f"outbox holds {final.outbox} events after the drain")
    problems += growth_problems(samples)
    if png is not None:
        _plot(samples, png)
    for problem in problems:
        print(f"FAIL: {problem}")
    if not problems:
        print("PASS: nothing lost, outbox drained, RSS and fds flat")
    return 1 if problems else 0


def growth_problems(samples: list[Sample]) -> list[str]:
    if len(samples) < 6:
        return []
    third = len(samples) // 3
    middle, last = samples[third : 2 * third], samples[2 * third :]
    problems = []
    rss_mid = statistics.median(s.rss_mb for s in middle)
    rss_last = statistics.median(s.rss_mb for s in last)
    if rss_last > rss_mid * (1 + RSS_GROWTH_FRACTION) and rss_last - rss_mid > RSS_GROWTH_MB:
        problems.append(f"RSS grows: median {rss_mid:.1f} MB → {rss_last:.1f} MB")
    fd_mid = max(s.fds for s in middle)
    fd_last = min(s.fds for s in last)
    if fd_last > fd_mid + FD_GROWTH:
        problems.append(f"open fds grow: {fd_mid} → {fd_last}")
    task_mid = max(s.tasks for s in middle)
    task_last = min(s.tasks for s in last)
    if task_last > task_mid + TASK_GROWTH:
        problems.append(f"asyncio tasks grow: {task_mid:.0f} → {task_last:.0f}")
    return problems


def _header() -> str:
    return (
        "| t s | RSS MB | open fds | asyncio tasks | outbox events | sent | received "
        "| broker restarts |\n|---|---|---|---|---|---|---|---|"
    )


def _row(s: Sample) -> str:
    return (
        f"| {s.t:.0f} | {s.rss_mb:.1f} | {s.fds} | {s.tasks:.0f} | {s.outbox:.0f} | {s.sent} "
        f"| {s.received} | {s.broker_restarts} |"
    )


def _plot(samples: list[Sample], path: Path) -> None:
    try:
        import matplotlib  # type: ignore[import-not-found,unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    t = [s.t for s in samples]
    fig, axes = plt.subplots(3, 1, sharex=True, figsize=(8, 7))
    axes[0].plot(t, [s.rss_mb for s in samples])
    axes[0].set_ylabel("RSS MB")
    axes[1].plot(t, [s.fds for s in samples])
    axes[1].set_ylabel("open fds")
    axes[2].plot(t, [s.outbox for s in samples])
    axes[2].set_ylabel("outbox events")
    axes[2].set_xlabel("seconds")
    fig.savefig(path)
    print(f"plot written to {path}")


async def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError("the gateway did not listen in 30 s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=2.0, help="reads/s per camera (3 cameras)")
    parser.add_argument("--restart-minutes", type=float, default=3.0, help="broker restart period")
    parser.add_argument("--png", type=Path, default=None, help="plot (needs matplotlib)")
    args = parser.parse_args(argv)
    return asyncio.run(soak(args.minutes, args.rate, args.restart_minutes, args.png))


if __name__ == "__main__":
    sys.exit(main())
