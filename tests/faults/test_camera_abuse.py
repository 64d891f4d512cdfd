"""Cameras that misbehave: each gets bounded resources and a clear metric, and a
well-behaved camera next to it keeps every read arriving.

- a TCP camera that sends garbage, then half a frame, then goes silent;
- a TCP "camera" that accepts and hangs up at once (the adapter's backoff bounds it);
- a client making 1,000 connections to the HTTP port as fast as it can;
- HTTP slowloris: bodies sent one byte a second.

Each test asserts what it controls (what was sent, answered, counted); the
latencies and rates it sees are recorded, not asserted (bench/ measures them).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.adapters.base import ReconnectPolicy
from gateway.app import Gateway
from gateway.broker import MosquittoProcess
from gateway.codecs.tcp import (
    Command,
    Frame,
    FrameDecoder,
    encode_login_reply,
    encode_recognition_frame,
)
from gateway.simulate.common import PlateGenerator
from gateway.simulate.tcp import TcpCameraSimulator
from tests.faults.harness import (
    HTTP_CAMERA,
    TCP_CAMERA,
    TCP_PASSWORD,
    TCP_USER,
    CountingCollector,
    HttpLoad,
    plate_key,
    record,
    sha,
    wait_listening,
)
from tests.helpers import eventually, gateway_config, sample

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.timeout(60)]

BAD = "bad_cam"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def tcp_entry(camera: str, port: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": camera,
        "protocol": "tcp",
        "host": "127.0.0.1",
        "port": port,
        "username": TCP_USER,
        "password": TCP_PASSWORD,
        **extra,
    }


class BadCamera:
    """Answers the login, then runs `script(writer)` and keeps the connection open."""

    def __init__(self, script: Callable[[asyncio.StreamWriter], Any] | None) -> None:
        self.script = script
        self.connections = 0
        self.server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> BadCamera:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in self._tasks:
            task.cancel()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.script is None:  # accept and hang up at once
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        decoder = FrameDecoder()
        with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
            while not isinstance(event := decoder.next_event(), Frame):
                decoder.receive_data(await reader.read(4096) or b"")
            assert event.command == Command.LOGIN_REQ
            writer.write(encode_login_reply(200))
            await self.script(writer)
            await writer.drain()
            await reader.read()  # silence, until the gateway hangs up
        writer.close()
        self._tasks.discard(task)


async def garbage_half_frame_silence(writer: asyncio.StreamWriter) -> None:
    writer.write(bytes(range(256)).replace(b"\xcc", b"\x00") * 40)  # ~10 KB of garbage
    sim = TcpCameraSimulator(seed=3)
    read = PlateGenerator(3).read("bad")
    frame = encode_recognition_frame(sim.next_metadata(read), [read.plate_jpeg, read.scene_jpeg])
    writer.write(frame[: len(frame) // 2])  # half a frame, then nothing more


@contextlib.asynccontextmanager
async def good_tcp_camera() -> AsyncIterator[TcpCameraSimulator]:
    sim = TcpCameraSimulator(
        user=TCP_USER, password=TCP_PASSWORD, rate=5.0, seed=21, camera=TCP_CAMERA
    )
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


def stop_reads(sim: TcpCameraSimulator) -> None:
    """The simulator's pusher ends after the read it may be sending now."""
    sim.count = sim.frames_sent


def tcp_latencies(sim: TcpCameraSimulator, collector: CountingCollector) -> list[float]:
    sent = {
        sha(plate): at for (_, plate, _), at in zip(sim.sent_reads, sim.sent_times, strict=True)
    }
    out = []
    for event in collector.events():
        key = plate_key(event)
        if event["camera"] == TCP_CAMERA and key in sent and event["id"] in collector.arrival:
            out.append(collector.arrival[event["id"]] - sent[key])
    return out


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98] if len(values) > 1 else 0


async def test_garbage_half_frame_then_silence(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    policy = ReconnectPolicy(initial_seconds=0.2, frame_stall_seconds=1.0)
    with CountingCollector(mqtt_broker.host, mqtt_broker.port, topics=("lpr/+/event",)) as sub:
        async with BadCamera(garbage_half_frame_silence) as bad, good_tcp_camera() as good:
            config = gateway_config(
                mqtt_broker.url,
                tmp_path,
                [
                    tcp_entry(BAD, bad.port, idle_timeout_seconds=1.5),
                    tcp_entry(TCP_CAMERA, good.port),
                ],
            )
            async with Gateway(config, reconnect_policy=policy) as gw:
                await eventually(lambda: bad.connections >= 3, timeout=15)
                await eventually(lambda: len(good.sent_reads) >= 10, timeout=15)
                stop_reads(good)  # what was sent can now all arrive
                skipped = sample(gw.metrics, "lpr_camera_bytes_skipped_total", camera=BAD)
                reconnects = sample(gw.metrics, "lpr_camera_reconnects_total", camera=BAD)
                good_reconnects = sample(
                    gw.metrics, "lpr_camera_reconnects_total", camera=TCP_CAMERA
                )
                sent = len(good.sent_reads)
                await sub.until(lambda _: len(tcp_latencies(good, sub)) >= sent, timeout=10)
                tasks = len(asyncio.all_tasks())
    latencies = tcp_latencies(good, sub)
    record(
        f"TCP camera: garbage, half frame, silence: {bad.connections} sessions, "
        f"{skipped:.0f} garbage bytes skipped (lpr_camera_bytes_skipped_total), "
        f"{reconnects:.0f} reconnects (lpr_camera_reconnects_total); the other camera: "
        f"sent {sent}, received {len(latencies)}, lost 0, p99 {p99(latencies) * 1000:.0f} ms"
    )
    assert skipped >= 10_000 - 256  # all the garbage was seen and counted
    assert reconnects >= 2  # silence after the half frame is noticed; the session renewed
    assert good_reconnects == 0
    assert len(latencies) >= sent >= 10
    assert tasks < 40  # no task pile-up per bad session


async def test_camera_that_hangs_up_at_once_is_retried_with_backoff(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    """Production backoff (1 s doubling): a camera that accepts and closes gets a few
    attempts, not thousands, and each is counted."""
    async with BadCamera(None) as bad, good_tcp_camera() as good:
        config = gateway_config(
            mqtt_broker.url,
            tmp_path,
            [tcp_entry(BAD, bad.port), tcp_entry(TCP_CAMERA, good.port)],
        )
        async with Gateway(config) as gw:
            started = time.monotonic()
            await eventually(lambda: bad.connections >= 2, timeout=15)
            # Backoff bounds the attempts from above: a slower machine makes
            # fewer in the window, never more.
            await asyncio.sleep(max(0.0, started + 4.0 - time.monotonic()))
            attempts = bad.connections
            window = time.monotonic() - started
            counted = sample(gw.metrics, "lpr_camera_reconnects_total", camera=BAD)
            stop_reads(good)  # each read sent must now be taken in

            def good_reads() -> float:
                return sample(
                    gw.metrics, "lpr_events_received_total", camera=TCP_CAMERA, source="tcp"
                )

            good_sent = len(good.sent_reads)
            await eventually(lambda: good_reads() >= good_sent, timeout=10)
    record(
        f"TCP camera that accepts and hangs up: {attempts} connections in {window:.1f} s "
        f"(backoff from {ReconnectPolicy().initial_seconds:g} s), "
        f"{counted:.0f} counted in lpr_camera_reconnects_total; the other camera: "
        f"{good_reads():.0f} of {good_sent} reads taken in"
    )
    assert good_sent >= 1
    assert 2 <= attempts <= 5
    assert counted >= attempts - 1


FLOODER = textwrap.dedent(
    """
    import socket, sys, time
    port, count = int(sys.argv[1]), int(sys.argv[2])
    start = time.monotonic(); failed = 0; answered = {}
    for n in range(count):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            if n % 2:  # a request to an unknown path, and its reply read
                s.sendall(b"GET /flood HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
                head = b""
                while b"\\r\\n" not in head:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    head += chunk
                status = head.split(b" ")[1].decode() if head.count(b" ") else "none"
                answered[status] = answered.get(status, 0) + 1
            s.close()  # the other half: connect, then hang up at once
        except OSError:
            failed += 1
    print(count, failed, round(time.monotonic() - start, 2), answered)
    """
)
FLOOD_CONNECTIONS = 1000
SLOWLORIS = 20


async def test_http_connection_flood_and_slowloris(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    """1,000 connections as fast as one client makes them (half bare, half a request
    to an unknown path), and 20 slowloris bodies at one byte a second, while a real
    camera posts 4 reads/s: each connection is answered or closed and counted, each
    of the camera's reads gets its 200 and arrives."""
    with CountingCollector(mqtt_broker.host, mqtt_broker.port, topics=("lpr/+/event",)) as sub:
        config = gateway_config(
            mqtt_broker.url,
            tmp_path,
            [
                {
                    "id": HTTP_CAMERA,
                    "protocol": "http",
                    "path": f"/lpr/{HTTP_CAMERA}",
                    "username": "cam",
                    "password": "cam-secret",
                }
            ],
            http={"request_timeout_seconds": 2.0},
        )
        assert config.http.port
        port = config.http.port
        async with Gateway(config) as gw:
            await wait_listening(port)
            fds_before = open_fds()
            async with HttpLoad(port, rate=4.0) as http:
                flood = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-c",
                    FLOODER,
                    str(port),
                    str(FLOOD_CONNECTIONS),
                    stdout=subprocess.PIPE,
                )
                lorises = [asyncio.create_task(slowloris(port)) for _ in range(SLOWLORIS)]
                peak_fds = fds_before
                while flood.returncode is None:
                    peak_fds = max(peak_fds, open_fds())
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(flood.wait(), 0.1)
                assert flood.stdout is not None
                made, failed, took, answered = (await flood.stdout.read()).decode().split(" ", 3)
                statuses_loris = await asyncio.gather(*lorises)
                # the camera is still served after the flood
                sent_after = len(http.sim.sent)
                await eventually(lambda: len(http.sim.sent) >= sent_after + 2)
                await http.stop()
                replies = [s for s in http.sim.sent if s.kind == "plate"]
                ids = http.accepted_ids()
                await sub.until(lambda _: set(ids) <= set(sub.arrival), timeout=10)
            await eventually(lambda: open_fds() <= fds_before + 5, timeout=10)
            counted_408 = sample(gw.metrics, "lpr_http_requests_total", status="408")
            counted_401 = sample(gw.metrics, "lpr_http_requests_total", status="401")
            counted_404 = sample(gw.metrics, "lpr_http_requests_total", status="404")
    reply_seconds = [s.seconds for s in replies]
    record(
        f"HTTP flood: {made} connections in {took} s ({failed} failed to connect), "
        f"replies {answered.strip()}, {counted_401:.0f} probes counted "
        f"(lpr_http_requests_total{{status=401}}); {SLOWLORIS} slowloris bodies at 1 byte/s: "
        f"{statuses_loris.count(408)} answered 408 after 2 s (lpr_http_requests_total"
        f"{{status=408}} = {counted_408:.0f}); fds {fds_before} → peak {peak_fds} → back; "
        f"the real camera: {len(ids)}/{len(replies)} got 200, all arrived, lost 0, "
        f"reply p99 {p99(reply_seconds) * 1000:.0f} ms"
    )
    probes = FLOOD_CONNECTIONS // 2
    assert (int(made), int(failed)) == (FLOOD_CONNECTIONS, 0)
    assert answered.strip() == repr({"401": probes})  # every probe answered ...
    assert (counted_401, counted_404) == (probes, 0)  # ... and counted once
    assert statuses_loris == [408] * SLOWLORIS
    assert counted_408 == SLOWLORIS
    assert len(ids) == len(replies) >= 2  # every read of the camera got its 200


async def slowloris(port: int) -> int | None:
    """Headers, then a 100 kB body one byte a second; the status the gateway answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST /lpr/{HTTP_CAMERA} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Authorization: Basic Y2FtOmNhbS1zZWNyZXQ=\r\nContent-Length: 100000\r\n\r\n{".encode()
    )
    try:
        async with asyncio.timeout(10):
            while True:
                await writer.drain()
                try:
                    line = await asyncio.wait_for(reader.readline(), 1.0)
                except TimeoutError:
                    writer.write(b" ")
                    continue
                if line.startswith(b"HTTP/1.1 "):
                    return int(line.split()[1])
                if not line:
                    return None
    except (ConnectionError, TimeoutError):
        return None
    finally:
        writer.close()
