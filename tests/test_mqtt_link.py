"""The MQTT link on its own, against a real mosquitto: CONNACK, PUBACK futures,
the public ack callback, subscriptions made again on every connect, errors as
`BrokerError`."""

from __future__ import annotations

import asyncio
import socket
import threading
import uuid
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from gateway.broker import MosquittoProcess
from gateway.config import MqttConfig
from gateway.errors import BrokerError
from gateway.mqtt.link import LinkClosedError, MqttLink, _Connection
from tests.helpers import eventually


def link_to(url: str, acks: list[tuple[int, ReasonCode]] | None = None) -> MqttLink:
    config = MqttConfig(urls=(url,), client_id=f"link-test-{uuid.uuid4().hex[:6]}")
    return MqttLink(
        config,
        will=("test/bridge/state", b"offline"),
        on_ack=lambda mid, reason: acks.append((mid, reason)) if acks is not None else None,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_publish_acked_returns_on_the_puback_and_the_ack_callback_sees_it(
    mqtt_broker: MosquittoProcess,
) -> None:
    acks: list[tuple[int, ReasonCode]] = []
    link = link_to(mqtt_broker.url, acks)
    await link.connect()
    try:
        assert link.is_open
        await link.publish_acked("test/a", b"1", retain=False)
        mid = link.publish("test/b", b"2", retain=False)
        await eventually(lambda: mid in [m for m, _ in acks], what="the PUBACK")
        assert all(not reason.is_failure for _, reason in acks)
    finally:
        await link.disconnect()
    assert not link.is_open
    with pytest.raises(LinkClosedError):
        link.publish("test/c", b"3", retain=False)


async def test_a_closing_link_fails_the_publish_someone_awaits(
    mqtt_broker: MosquittoProcess,
) -> None:
    link = link_to(mqtt_broker.url)
    await link.connect()
    waiting = asyncio.ensure_future(link.publish_acked("test/a", b"1", retain=False))
    link.close()  # before any PUBACK can be read
    with pytest.raises(LinkClosedError):
        await asyncio.wait_for(waiting, 5)
    link.release()


async def test_subscriptions_are_made_again_on_every_connect(
    mqtt_broker: MosquittoProcess,
) -> None:
    received: list[tuple[str, bytes, bool]] = []
    link = link_to(mqtt_broker.url)
    link.subscribe("test/sub/#", lambda *message: received.append(message))
    for round_ in range(2):
        await link.connect()
        try:
            await link.publish_acked(f"test/sub/{round_}", b"x", retain=False)

            def arrived(n: int = round_ + 1) -> bool:
                return len(received) >= n

            await eventually(arrived, what="the message")
        finally:
            await link.disconnect()
    assert [topic for topic, _, _ in received] == ["test/sub/0", "test/sub/1"]


async def test_a_broker_that_is_not_there_is_a_broker_error() -> None:
    link = link_to(f"mqtt://127.0.0.1:{free_port()}")
    with pytest.raises(BrokerError):
        await link.connect()
    assert not link.is_open


def test_socket_hooks_after_the_loop_closed_do_nothing() -> None:
    """paho closes a collected client's socket in `__del__`, from whatever thread
    collects it, possibly after the gateway's loop has ended: the hook must not
    raise there ("Event loop is closed" printed as an ignored exception)."""

    async def make() -> _Connection:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="closed-loop")
        return _Connection(client, lambda *_: None, lambda *_: None)

    connection = asyncio.run(make())
    assert connection.loop.is_closed()
    with socket.socket() as sock:
        errors: list[BaseException] = []

        def close_from_another_thread() -> None:
            try:
                connection._on_socket_close(connection.client, None, sock)
            except BaseException as exc:  # what the hook must not do
                errors.append(exc)

        thread = threading.Thread(target=close_from_another_thread)
        thread.start()
        thread.join(10)
        connection._on_socket_close(connection.client, None, sock)  # and from this one
    assert errors == []


async def test_a_connect_cancelled_as_the_connack_lands_is_cancelled(
    mqtt_broker: MosquittoProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelling `connect()` in the loop turn that brings its CONNACK must still
    cancel it. Python 3.11's `asyncio.wait_for` returned the result instead and
    swallowed the cancel; the gateway's stop then waited forever for a publisher
    that went on serving a connection nobody would close."""
    link = link_to(mqtt_broker.url)
    connecting: list[asyncio.Task[None]] = []

    class CancelledOnConnack(_Connection):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            # Registered before the link awaits the future: runs first, in the
            # same loop turn as the CONNACK.
            self.connected.add_done_callback(lambda _: connecting[0].cancel())

        def _on_connect(self, *args: Any) -> None:
            # The CONNACK is handed on once the link waits for it (it takes the
            # connection and awaits the CONNACK with no await in between): a
            # CONNACK read before that would find nobody to cancel.
            if link._connection is not self:
                self.loop.call_soon(self._on_connect, *args)
                return
            super()._on_connect(*args)

    monkeypatch.setattr("gateway.mqtt.link._Connection", CancelledOnConnack)
    connecting.append(asyncio.create_task(link.connect()))
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(connecting[0], 10)
    assert connecting[0].cancelled()
    assert not link.is_open  # and the half-made connection was let go


async def test_a_connect_cancelled_while_its_socket_opens_closes_that_socket() -> None:
    """paho's connect() runs in a thread that a cancel cannot stop: it still
    opens the socket and queues CONNECT. That socket must be closed once the
    thread is done, not left open (and watched by the loop) on a connection
    nobody holds until the client is collected. The listener stands for a
    broker that has not answered yet: it sees the connection, then its close."""
    accepted = asyncio.Event()
    closed = asyncio.Event()

    async def broker_that_never_answers(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        accepted.set()
        while await reader.read(1024):  # CONNECT, if it went out before the close
            pass
        closed.set()
        writer.close()

    server = await asyncio.start_server(broker_that_never_answers, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        link = link_to(f"mqtt://127.0.0.1:{port}")
        connecting = asyncio.create_task(link.connect())
        await asyncio.sleep(0)  # in the executor now, opening the socket
        connecting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await connecting
        await asyncio.wait_for(closed.wait(), 10)
        assert accepted.is_set()
        assert not link.is_open
    finally:
        server.close()
        await server.wait_closed()
