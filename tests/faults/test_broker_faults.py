"""Broker faults: a broker that hangs without closing, and an outbox whose disk fills."""

from __future__ import annotations

import contextlib
import resource
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.broker import MosquittoProcess
from gateway.event import Image, PlateEvent, Source, utc_now
from gateway.pipeline import Admission
from tests.faults.proxy import StallingProxy
from tests.helpers import MqttCollector, gateway_config, sample

pytestmark = pytest.mark.slow


def event(n: int, scene: int = 50_000) -> PlateEvent:
    return PlateEvent(
        camera="cam",
        source=Source.INJECT,
        plate=f"S{n:04d}",
        received=utc_now(),
        raw={"n": n},
        scene_image=Image(b"\xff\xd8" + bytes(scene)),
    )


async def test_stalled_broker_is_noticed_and_nothing_is_lost(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    proxy = StallingProxy(mqtt_broker.host, mqtt_broker.port)
    port = await proxy.start()
    config = gateway_config(
        f"mqtt://127.0.0.1:{port}", tmp_path, mqtt={"keepalive_seconds": 1, "publish_window": 8}
    )
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=("lpr/+/event",)) as sub:
        async with Gateway(config) as gw:
            await sub.until(lambda _: gw.publisher is not None and gw.publisher.connected)
            for n in range(20):
                assert await gw.submit(event(n)) is Admission.ACCEPTED
            await sub.until(lambda ms: len(ms) >= 20)
            proxy.stall_current()
            for n in range(20, 100):
                assert await gw.submit(event(n)) is Admission.ACCEPTED
            # Keep-alive 1 s: the hang is noticed within a few seconds and the
            # publisher comes back through a new proxied connection.
            await sub.until(
                lambda ms: {m.json()["raw"]["n"] for m in ms} >= set(range(100)), timeout=30
            )
            assert proxy.connections >= 2
            assert sample(gw.metrics, "lpr_mqtt_reconnects_total") >= 2
    await proxy.close()


@contextlib.contextmanager
def files_may_not_grow(directory: Path) -> Iterator[None]:
    """A real write error for every file under `directory` that grows (EFBIG,
    as a full disk gives ENOSPC): this process may write no file past the size
    of the largest one there now."""
    largest = max(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error, not a kill
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (largest + 1, limits[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous_handler)


async def test_disk_full_refuses_cleanly_and_recovers(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    """Files that may not grow (the images' blob log and SQLite's WAL) make a
    refusal, not a crash, and nothing half-stored; space returns, intake too."""
    mqtt_broker.stop()  # keep everything in the outbox
    config = gateway_config(mqtt_broker.url, tmp_path)
    async with Gateway(config) as gw:
        assert await gw.submit(event(0)) is Admission.ACCEPTED
        with files_may_not_grow(config.outbox.path.parent):
            verdicts = [await gw.submit(event(n, scene=400_000)) for n in range(1, 4)]
        assert verdicts == [Admission.OUTBOX_FULL] * 3
        refused = sample(gw.metrics, "lpr_events_refused_total", camera="cam", reason="outbox_full")
        assert refused == 3
        assert await gw.submit(event(4)) is Admission.ACCEPTED
        assert gw.outbox.pending_events == 2
    with sqlite3.connect(config.outbox.path) as db:
        assert db.execute("SELECT COUNT(*) FROM message WHERE last_of_event = 1").fetchone() == (2,)
    mqtt_broker.start()
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=("lpr/+/event",)) as sub:
        async with Gateway(config):
            received = await sub.until(lambda ms: len(ms) >= 2)
            assert [m.json()["raw"]["n"] for m in received] == [0, 4]


async def test_database_full_refuses_cleanly_and_recovers(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    """SQLITE_FULL (the database may not grow, the blob log still could) is a
    refusal too: the images appended for the refused reads are not kept."""
    mqtt_broker.stop()
    config = gateway_config(mqtt_broker.url, tmp_path)
    async with Gateway(config) as gw:
        limit = gw.outbox.db.execute("PRAGMA page_count").fetchone()[0]
        gw.outbox.db.execute(f"PRAGMA max_page_count={limit}")
        # Reads fit in the database's last page for a while; then each is refused.
        verdicts = [await gw.submit(event(n, scene=30_000)) for n in range(200)]
        accepted = [n for n, v in enumerate(verdicts) if v is Admission.ACCEPTED]
        first_refused = len(accepted)
        assert 0 < first_refused < 200
        assert accepted == list(range(first_refused))
        refused = sample(gw.metrics, "lpr_events_refused_total", camera="cam", reason="outbox_full")
        assert refused == 200 - first_refused
        segment = gw.outbox.blobs
        # Only the accepted reads' scenes are in the blob log (30,002 bytes each).
        assert segment.current_size == first_refused * 30_002
        gw.outbox.db.execute("PRAGMA max_page_count=1073741823")  # space returns
        assert await gw.submit(event(200)) is Admission.ACCEPTED
    mqtt_broker.start()
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=("lpr/+/event",)) as sub:
        async with Gateway(config):
            received = await sub.until(lambda ms: len(ms) >= first_refused + 1)
            assert [m.json()["raw"]["n"] for m in received] == [*accepted, 200]
