"""Large payloads queued by reference (`gateway.mqtt.zero_copy`), against a real
mosquitto: the subscriber gets every byte, in order, over MQTT 3.1.1 and 5, also
when the socket takes a few KB per write; small ones still go paho's way."""

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
from gateway.mqtt import zero_copy
from gateway.mqtt.link import MqttLink
from gateway.mqtt.zero_copy import ZERO_COPY_MIN_BYTES, ZeroCopyClient
from tests.helpers import eventually


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


def test_the_installed_paho_is_the_one_the_zero_copy_client_was_written_for() -> None:
    # Fails after a paho upgrade that moved the private pieces: the gateway then
    # still publishes correctly, through paho's copying path; look at zero_copy.py.
    assert zero_copy.ZERO_COPY_AVAILABLE


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
    before = ZeroCopyClient.zero_copy_publishes
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
    assert ZeroCopyClient.zero_copy_publishes - before == large


async def test_without_the_expected_internals_it_publishes_through_paho(
    mqtt_broker: MosquittoProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(zero_copy, "ZERO_COPY_AVAILABLE", False)
    collector = _Collector(mqtt_broker, "zc/#")
    config = MqttConfig(urls=(mqtt_broker.url,), client_id=f"zc-link-{uuid.uuid4().hex[:6]}")
    link = MqttLink(config, will=("zc/state", b"offline"), on_ack=lambda *_: None)
    before = ZeroCopyClient.zero_copy_publishes
    payload = os.urandom(200_000)
    await link.connect()
    try:
        await link.publish_acked("zc/big", payload, retain=False)
        await eventually(lambda: len(collector.messages) == 1, what="the message")
    finally:
        await link.disconnect()
        collector.close()
    assert collector.messages == [("zc/big", payload)]
    assert ZeroCopyClient.zero_copy_publishes == before
