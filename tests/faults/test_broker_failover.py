"""Broker failover: `mqtt.url` as a list, against two real mosquitto processes.

The gateway connects to the first broker that answers and, when it loses the
connection, goes on with the next one; what the lost broker had not
acknowledged is sent again to the other. Each broker has its own subscriber,
so the test can tell which one every read went to; their union must hold
every accepted read, each camera's in order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.app import Gateway
from gateway.broker import MosquittoProcess
from gateway.config import Config, parse_config
from gateway.event import Image, PlateEvent, Source, utc_now
from gateway.pipeline import Admission
from gateway.publisher import BrokerBackoff
from gateway.simulate.http import HttpCameraSimulator
from tests.brokers import NatsCluster, NatsProcess
from tests.faults.harness import (
    CountingCollector,
    HttpLoad,
    ledger,
    record,
    three_cameras,
    until_each_camera_sent,
    wait_listening,
)
from tests.helpers import GatewayProcess, MqttCollector, Received, gateway_config, sample

pytestmark = pytest.mark.slow


@pytest.fixture
def two_brokers() -> Iterator[tuple[MosquittoProcess, MosquittoProcess]]:
    first, second = MosquittoProcess(), MosquittoProcess()
    first.start()
    second.start()
    try:
        yield first, second
    finally:
        first.close()
        second.close()


def failover_config(brokers: tuple[MosquittoProcess, ...], tmp_path: Path) -> Config:
    config = gateway_config(brokers[0].url, tmp_path)
    urls = tuple(b.url for b in brokers)
    return dataclasses.replace(config, mqtt=dataclasses.replace(config.mqtt, urls=urls))


def read(camera: str, n: int) -> PlateEvent:
    return PlateEvent(
        camera=camera,
        source=Source.INJECT,
        plate=f"F{n:04d}",
        received=utc_now(),
        raw={"n": n},
        scene_image=Image(b"\xff\xd8" + n.to_bytes(4, "big") * 5000),
    )


def numbers(messages: list[Received], camera: str) -> list[int]:
    """The reads of `camera` in order of arrival, a redelivery counted once."""
    seen: list[int] = []
    for m in messages:
        if m.topic == f"lpr/{camera}/event":
            n = m.json()["raw"]["n"]
            if n not in seen:
                seen.append(n)
    return seen


def last_read_is(camera: str, n: int) -> Callable[[list[Received]], bool]:
    return lambda messages: numbers(messages, camera)[-1:] == [n]


async def test_the_first_broker_that_answers_is_used(
    two_brokers: tuple[MosquittoProcess, MosquittoProcess], tmp_path: Path
) -> None:
    first, second = two_brokers
    first.stop()
    with MqttCollector(second.host, second.port, topics=("lpr/+/event",)) as sub:
        async with Gateway(failover_config(two_brokers, tmp_path)) as gw:
            assert await gw.submit(read("cam", 1)) is Admission.ACCEPTED
            received = await sub.until(lambda ms: len(ms) >= 1, timeout=20)
            assert numbers(received, "cam") == [1]
            assert gw.publisher is not None
            assert gw.publisher.link.label == f"{second.host}:{second.port}"


async def test_losing_the_broker_under_load_goes_on_with_the_next_and_loses_nothing(
    two_brokers: tuple[MosquittoProcess, MosquittoProcess], tmp_path: Path
) -> None:
    first, second = two_brokers
    cameras = ("gate_a", "gate_b", "gate_c")
    sent = 60
    topics = ("lpr/+/event",)
    with (
        MqttCollector(first.host, first.port, topics=topics) as on_first,
        MqttCollector(second.host, second.port, topics=topics) as on_second,
    ):
        async with Gateway(failover_config(two_brokers, tmp_path)) as gw:
            for n in range(sent):
                for camera in cameras:
                    assert await gw.submit(read(camera, n)) is Admission.ACCEPTED
                if n == 20:
                    await on_first.until(lambda ms: len(ms) >= 30, timeout=20)
                    first.kill()  # the node the gateway is connected to
                await asyncio.sleep(0.01)
            for camera in cameras:
                await on_second.until(last_read_is(camera, sent - 1), timeout=30)
            assert sample(gw.metrics, "lpr_mqtt_connected") == 1
            assert gw.publisher is not None
            assert gw.publisher.link.label == f"{second.host}:{second.port}"
    for camera in cameras:
        before, after = numbers(on_first.messages, camera), numbers(on_second.messages, camera)
        assert before == list(range(len(before)))  # in order on the first broker
        # ... and on the second, from where the first left off or a little
        # before (what it had not acknowledged is sent again), with no gap.
        assert after == list(range(after[0], sent))
        assert after[0] <= len(before)
        assert sorted(set(before) | set(after)) == list(range(sent))


@pytest.fixture
def nats_cluster() -> Iterator[NatsCluster]:
    cluster = NatsCluster(3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.mark.timeout(120)
async def test_a_nats_cluster_node_killed_under_load_loses_nothing(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    """Three cameras (TCP, HTTP, RTSP) through a 3-node NATS JetStream cluster:
    the node the gateway is connected to is SIGKILLed; a subscriber on the
    third node receives every read each camera handed over, in order."""
    first, _second, third = nats_cluster.nodes
    with CountingCollector(third.host, third.port, topics=("lpr/+/event",)) as collector:
        async with three_cameras(rate=5.0) as cams:
            config = gateway_config(first.url, tmp_path, cams.entries())
            mqtt_config = dataclasses.replace(config.mqtt, urls=tuple(nats_cluster.urls))
            config = dataclasses.replace(config, mqtt=mqtt_config)
            async with Gateway(
                config, broker_backoff=BrokerBackoff(initial_seconds=0.2, max_seconds=1.0)
            ) as gw:
                assert config.http.port and gw.publisher is not None
                await wait_listening(config.http.port)
                async with HttpLoad(config.http.port, rate=5.0) as http:
                    async with asyncio.timeout(15):
                        await cams.tcp.wait_logged_in()
                        await cams.rtsp.wait_playing()
                    await until_each_camera_sent(cams, http, 5)
                    assert gw.publisher.link.label == f"{first.host}:{first.port}"
                    killed_at = time.monotonic()
                    await asyncio.to_thread(first.kill)
                    while not gw.publisher.connected or gw.publisher.link.label == first_label(
                        first
                    ):
                        assert time.monotonic() - killed_at < 30, "no other node taken"
                        await asyncio.sleep(0.05)
                    reconnected_after = time.monotonic() - killed_at
                    await until_each_camera_sent(cams, http, 15)
                    await http.stop()
                    await cams.stop()
                    book = ledger(cams, http)
                    await collector.until(
                        lambda _: book.report(collector.events()).total_lost == 0, timeout=30
                    )
    report = book.report(collector.events())
    record(
        report.line(
            f"NATS 3-node cluster, connected node SIGKILLed, on another node after"
            f" {reconnected_after:.1f} s"
        )
    )
    report.assert_nothing_lost()


def first_label(node: NatsProcess) -> str:
    return f"{node.host}:{node.port}"


# -- shards: two gateways, disjoint cameras, one cluster -----------------------------


def shard_config(tmp_path: Path, name: str, urls: list[str], client_id: str | None) -> Config:
    mqtt: dict[str, Any] = {"url": urls}
    if client_id is not None:
        mqtt["client_id"] = client_id
    document = {
        "mqtt": mqtt,
        "outbox": {"path": str(tmp_path / name / "outbox.sqlite3")},
        "metrics": {"listen": ""},
        "dedup": {"window_seconds": 0},
    }
    return parse_config(yaml.safe_dump(document), {})


def reconnects(gw: Gateway) -> float:
    return gw.metrics.registry.get_sample_value("lpr_mqtt_reconnects_total") or 0.0


async def test_two_shards_on_a_cluster_each_read_arrives_exactly_once(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    """Two gateway processes with their own HTTP cameras and outboxes and no
    client id configured (each derives its own from its outbox): on a
    subscriber of the third node every read a camera had answered 200 arrives
    exactly once, each camera's in order, and neither gateway was ever pushed
    off the broker by the other."""
    urls = nats_cluster.urls
    third = nats_cluster.nodes[2]
    cameras = {"north": ("n_gate", "n_yard"), "south": ("s_gate", "s_yard")}
    sent = 15
    accepted: dict[str, list[str]] = {}
    with (
        MqttCollector(third.host, third.port, topics=("lpr/+/event",)) as sub,
        shard_process(tmp_path, "north", urls, cameras["north"]) as north,
        shard_process(tmp_path, "south", [*urls[1:], urls[0]], cameras["south"]) as south,
    ):
        for shard, process in (("north", north), ("south", south)):
            for camera in cameras[shard]:
                accepted[camera] = await post_reads(process, camera, sent)
        await sub.until(
            lambda ms: (
                {m.json()["id"] for m in ms} >= {i for ids in accepted.values() for i in ids}
            ),
            timeout=30,
        )
        for process in (north, south):
            assert process.metric("lpr_mqtt_reconnects_total") == 1
            assert process.metric("lpr_mqtt_connected") == 1
    arrived = [m.json() for m in sub.messages]
    ids = [event["id"] for event in arrived]
    assert len(ids) == len(set(ids)) == 4 * sent  # exactly once per event id
    for camera, expected in accepted.items():
        assert [e["id"] for e in arrived if e["camera"] == camera] == expected  # in order


def shard_process(
    tmp_path: Path, name: str, urls: list[str], cameras: tuple[str, ...]
) -> GatewayProcess:
    folder = tmp_path / name
    folder.mkdir()
    return GatewayProcess(
        {
            "mqtt": {"url": urls},  # no client_id: derived, unique per outbox
            "outbox": {"path": str(folder / "outbox.sqlite3")},
            "cameras": [
                {
                    "id": c,
                    "protocol": "http",
                    "path": f"/lpr/{c}",
                    "username": "cam",
                    "password": f"pw-{c}",
                }
                for c in cameras
            ],
        },
        folder,
    )


async def post_reads(process: GatewayProcess, camera: str, count: int) -> list[str]:
    """`count` reads from a simulated HTTP camera; the event ids of its 200 replies."""
    ids: list[str] = []
    url = process.url(f"/lpr/{camera}")
    async with HttpCameraSimulator(url, user="cam", password=f"pw-{camera}", camera=camera) as cam:
        for _ in range(count):
            reply = await cam.send_read()
            assert reply.status == 200, reply.reply
            ids.append(reply.reply["id"])
    return ids


async def test_two_gateways_with_one_client_id_push_each_other_off(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    """The control for the test above: what `check` refuses (one client id for
    two gateways) makes the broker close one session whenever the other
    connects: they reconnect again and again."""
    urls = nats_cluster.urls
    first = shard_config(tmp_path, "a", urls, "site-gateway")
    second = shard_config(tmp_path, "b", urls, "site-gateway")
    backoff = BrokerBackoff(initial_seconds=0.1, max_seconds=0.3)
    async with (
        Gateway(first, broker_backoff=backoff) as a,
        Gateway(second, broker_backoff=backoff) as b,
    ):
        deadline = time.monotonic() + 20
        while reconnects(a) + reconnects(b) < 6:
            assert time.monotonic() < deadline, "the shared client id went unnoticed"
            await asyncio.sleep(0.1)
