"""The lean paho client (`gateway.mqtt.lean_client`) against a real mosquitto.

Sending: large payloads queued by reference; the subscriber gets every byte,
in order, over MQTT 3.1.1 and 5, also when the socket takes a few KB per
write; small ones still go paho's way. Receiving: the socket read in bulk,
plain PUBACKs past paho's decoder; every ack and every message still handled,
also what arrives in one burst behind a SUBACK."""

from __future__ import annotations

import os
import socket
import threading
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.broker import MosquittoProcess
from gateway.config import MqttConfig
from gateway.mqtt import lean_client
from gateway.mqtt.lean_client import ZERO_COPY_MIN_BYTES, LeanClient
from gateway.mqtt.link import MqttLink
from tests.helpers import eventually, publish_once


class _Collector:
    """A plain paho subscriber in its own thread, keeping (topic, payload) in order."""

    def __init__(self, broker: MosquittoProcess, topic: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"zc-{uuid.uuid4()}")
        self.client.on_message = lambda _c, _u, m: self.messages.append((m.topic, bytes(m.payload)))
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        assert self._subscribed.wait(10), "subscription not acknowledged"

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_the_installed_paho_is_the_one_the_lean_client_was_written_for() -> None:
    # Fails after a paho upgrade that moved the private pieces: the gateway then
    # still works, through paho's own (slower) paths; look at lean_client.py.
    assert lean_client.ZERO_COPY_AVAILABLE
    assert lean_client.BULK_READ_AVAILABLE


@pytest.mark.parametrize("protocol_version", [4, 5])
async def test_every_ack_of_a_burst_is_handled_from_one_read(
    mqtt_broker: MosquittoProcess, protocol_version: int
) -> None:
    acked: list[int] = []
    config = MqttConfig(
        urls=(mqtt_broker.url,),
        client_id=f"lean-{uuid.uuid4().hex[:6]}",
        protocol_version=protocol_version,
    )
    # Someone subscribed: an MQTT 5 broker then acks with plain success.
    collector = _Collector(mqtt_broker, "lean/#")
    link = MqttLink(
        config, will=("lean/state", b"offline"), on_ack=lambda mid, _r: acked.append(mid)
    )
    before = LeanClient.plain_pubacks
    await link.connect()
    try:
        mids = [link.publish(f"lean/{n}", b"x" * n, retain=False) for n in range(200)]
        await eventually(lambda: len(acked) == len(mids), what="every PUBACK")
    finally:
        await link.disconnect()
        collector.close()
    assert sorted(acked) == sorted(mids)
    assert LeanClient.plain_pubacks - before == len(mids)


async def test_messages_read_ahead_behind_a_suback_are_not_left_waiting(
    mqtt_broker: MosquittoProcess,
) -> None:
    # Retained messages come right behind the SUBACK, likely in one read; paho
    # handles one packet per read call when nothing is in flight, so what was
    # read ahead must be handled without waiting for the socket's next bytes
    # (the next keep-alive, a minute away).
    topics = [f"lean-retained/{n}" for n in range(30)]
    for topic in topics:
        publish_once(mqtt_broker.host, mqtt_broker.port, topic, topic, retain=True)
    got: list[str] = []
    config = MqttConfig(urls=(mqtt_broker.url,), client_id=f"lean-{uuid.uuid4().hex[:6]}")
    link = MqttLink(config, will=("lean/state", b"offline"), on_ack=lambda *_: None)
    await link.connect()
    try:
        link.subscribe("lean-retained/#", lambda topic, _p, _r: got.append(topic))
        await eventually(lambda: len(got) == len(topics), timeout=20, what="every retained one")
    finally:
        await link.disconnect()
    assert sorted(got) == sorted(topics)


@pytest.mark.parametrize("protocol_version", [4, 5])
@pytest.mark.parametrize("send_buffer", [None, 4096])
async def test_large_and_small_payloads_arrive_whole_and_in_order(
    mqtt_broker: MosquittoProcess, protocol_version: int, send_buffer: int | None
) -> None:
    collector = _Collector(mqtt_broker, "zc/#")
    config = MqttConfig(
        urls=(mqtt_broker.url,),
        client_id=f"zc-link-{uuid.uuid4().hex[:6]}",
        protocol_version=protocol_version,
    )
    link = MqttLink(config, will=("zc/state", b"offline"), on_ack=lambda *_: None)
    before = LeanClient.zero_copy_publishes
    sizes = [300_000, 10, ZERO_COPY_MIN_BYTES, ZERO_COPY_MIN_BYTES - 1, 20_000, 2_000, 330_000]
    sent = [(f"zc/{n}", os.urandom(size)) for n, size in enumerate(sizes)]
    await link.connect()
    try:
        if send_buffer is not None:
            # A small send buffer: paho's writes go out a few KB at a time, so
            # the payload's view is sliced at many places and the header's end.
            link._connection.client.socket().setsockopt(  # type: ignore[union-attr]
                socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer
            )
        for topic, payload in sent:
            link.publish(topic, payload, retain=False)
        await link.publish_acked("zc/last", b"end", retain=False)
        await eventually(lambda: len(collector.messages) == len(sent) + 1, what="all messages")
    finally:
        await link.disconnect()
        collector.close()
    assert collector.messages[:-1] == sent
    large = sum(1 for size in sizes if size >= ZERO_COPY_MIN_BYTES)
    assert LeanClient.zero_copy_publishes - before == large


async def test_without_the_expected_internals_it_publishes_through_paho(
    mqtt_broker: MosquittoProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lean_client, "ZERO_COPY_AVAILABLE", False)
    collector = _Collector(mqtt_broker, "zc/#")
    config = MqttConfig(urls=(mqtt_broker.url,), client_id=f"zc-link-{uuid.uuid4().hex[:6]}")
    link = MqttLink(config, will=("zc/state", b"offline"), on_ack=lambda *_: None)
    before = LeanClient.zero_copy_publishes
    payload = os.urandom(200_000)
    await link.connect()
    try:
        await link.publish_acked("zc/big", payload, retain=False)
        await eventually(lambda: len(collector.messages) == 1, what="the message")
    finally:
        await link.disconnect()
        collector.close()
    assert collector.messages == [("zc/big", payload)]
    assert LeanClient.zero_copy_publishes == before


async def test_without_the_expected_read_internals_it_reads_through_paho(
    mqtt_broker: MosquittoProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lean_client, "BULK_READ_AVAILABLE", False)
    acked: list[int] = []
    config = MqttConfig(urls=(mqtt_broker.url,), client_id=f"lean-{uuid.uuid4().hex[:6]}")
    link = MqttLink(
        config, will=("lean/state", b"offline"), on_ack=lambda mid, _r: acked.append(mid)
    )
    before = LeanClient.plain_pubacks
    await link.connect()
    try:
        mids = [link.publish(f"lean/{n}", b"x", retain=False) for n in range(20)]
        await eventually(lambda: len(acked) == len(mids), what="every PUBACK")
    finally:
        await link.disconnect()
    assert sorted(acked) == sorted(mids)
    assert LeanClient.plain_pubacks == before
