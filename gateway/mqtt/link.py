"""The MQTT link: paho-mqtt 2.x driven by the asyncio loop through its socket hooks.

One `MqttLink` lives as long as the publisher; each `connect()` makes a new
paho client (no hidden session state in paho competes with the outbox for
redelivery), waits for CONNACK and makes the subscriptions again. Errors are
translated here, once, into `BrokerError`. PUBACKs reach the owner through the
public `on_ack(mid, reason)` callback; `publish_acked` awaits one through a
message-id → future map, as aiomqtt does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from gateway.config import MqttConfig
from gateway.errors import BrokerError
from gateway.mqtt.lean_client import LeanClient

log = logging.getLogger(__name__)

CONNACK_TIMEOUT_SECONDS = 10.0
# How long paho may take to close the socket after our DISCONNECT.
DISCONNECT_WAIT_SECONDS = 1.0
# MQTT 5 reason code of a keep-alive timeout: a silent broker, not a refusal.
_KEEPALIVE_TIMEOUT_REASON = 0x8D

AckCallback = Callable[[int, ReasonCode], None]
_ConnectionAck = Callable[["_Connection", int, ReasonCode], None]
MessageHandler = Callable[[str, bytes, bool], None]


class LinkClosedError(BrokerError):
    """The connection is gone: not the fault of the message being published."""


class PublishRefusedError(BrokerError):
    """The MQTT client library refused this message (topic or payload too long, ...)."""


class _Connection:
    """One broker connection: a paho client wired into the running loop."""

    def __init__(
        self, client: mqtt.Client, on_ack: _ConnectionAck, on_message: MessageHandler
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self.client = client
        self.on_ack = on_ack
        self.on_message = on_message
        self.connected: asyncio.Future[None] = self.loop.create_future()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        # mid → future of a publish someone awaits (`MqttLink.publish_acked`)
        self.waiting: dict[int, asyncio.Future[None]] = {}
        self.sock: socket.socket | None = None
        # The broker went silent (keep-alive): a drop that says nothing about
        # the message in flight.
        self.keepalive_expired = False
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        self.on_message(message.topic, bytes(message.payload), bool(message.retain))

    def _in_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        # connect() runs in an executor thread and fires socket hooks there.
        if self.loop.is_closed():
            # A client collected after its loop ended (paho closes its socket
            # in __del__, from whatever thread collects it): nothing is watched
            # any more, and raising there only prints "exception ignored".
            return
        if threading.get_ident() == self.loop_thread:
            fn(*args)
        else:
            self.loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, client: mqtt.Client, _u: Any, sock: Any) -> None:
        self.sock = sock
        self._in_loop(self.loop.add_reader, sock, client.loop_read)

    def _on_socket_close(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        self._in_loop(self._forget_socket, sock)

    def _forget_socket(self, sock: Any) -> None:
        self._unwatch(sock)
        self.sock = None
        self.resolve_closed()

    def _unwatch(self, sock: Any) -> None:
        if sock is not None and sock.fileno() != -1:
            self.loop.remove_reader(sock)
            self.loop.remove_writer(sock)

    def _on_register_write(self, client: mqtt.Client, _u: Any, sock: Any) -> None:
        self._in_loop(self.loop.add_writer, sock, client.loop_write)

    def _on_unregister_write(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        self._in_loop(self._unwatch_writer, sock)

    def _unwatch_writer(self, sock: Any) -> None:
        if sock.fileno() != -1:
            self.loop.remove_writer(sock)

    def _on_connect(
        self, _c: mqtt.Client, _u: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        if self.connected.done():
            return
        if reason.is_failure:
            self.connected.set_exception(BrokerError(f"broker refused the connection: {reason}"))
        else:
            self.connected.set_result(None)

    def _on_disconnect(
        self, _c: mqtt.Client, _u: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        if not self.connected.done():
            self.connected.set_exception(BrokerError(f"disconnected before CONNACK: {reason}"))
        if getattr(reason, "value", None) == _KEEPALIVE_TIMEOUT_REASON:
            self.keepalive_expired = True
        self.resolve_closed()

    def resolve_closed(self) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(LinkClosedError("the connection closed before the PUBACK"))

    def _on_publish(
        self, _c: mqtt.Client, _u: Any, mid: int, reason: ReasonCode, _props: Any
    ) -> None:
        future = self.waiting.get(mid)
        if future is not None and not future.done():
            if reason.is_failure:
                future.set_exception(BrokerError(f"broker refused it: {reason}"))
            else:
                future.set_result(None)
        self.on_ack(self, mid, reason)

    async def misc_timer(self) -> None:
        """paho's keep-alive: PINGREQ, and noticing a broker that stopped answering."""
        while not self.closed.done():
            await asyncio.sleep(1.0)
            if self.client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self.keepalive_expired = True
                self.resolve_closed()

    def close(self) -> None:
        self._unwatch(self.sock)
        self.resolve_closed()


def _abandon(connection: _Connection, opening: asyncio.Future[Any]) -> None:
    """A connection whose `connect` was cancelled, once paho's connect() has
    returned in its thread: unwatched and its socket closed."""
    if not opening.cancelled():
        opening.exception()  # retrieved: a connect that failed opened nothing
    connection.close()
    sock = connection.client.socket()
    if sock is not None:
        sock.close()


class MqttLink:
    """The connection to the broker, one at a time; subscriptions outlive each one."""

    def __init__(
        self,
        mqtt_config: MqttConfig,
        *,
        will: tuple[str, bytes],
        on_ack: AckCallback,
    ) -> None:
        self.mqtt = mqtt_config
        self.will = will
        self.on_ack = on_ack
        # Which broker of `mqtt.urls` is tried next (counting round the list).
        self._broker_index = 0
        self._established = False  # the current connection got its CONNACK
        self._subscriptions: list[tuple[str, MessageHandler]] = []
        self._connection: _Connection | None = None
        self._misc: asyncio.Task[None] | None = None

    # -- the connection --------------------------------------------------------

    @property
    def label(self) -> str:
        """host:port of the broker connected to, or tried next."""
        host, port = self.mqtt.broker(self._broker_index)
        return f"{host}:{port}"

    async def connect(self) -> None:
        """Open a new connection and wait for CONNACK; `BrokerError` if that fails.

        With several brokers, each is tried once, from the one tried next on
        (`BrokerError` when none answered); after a connection is lost, the
        next one in the list is tried first. Only one connection at a time:
        `release()` the last one first.
        """
        brokers = max(1, len(self.mqtt.urls))
        failures: list[str] = []
        for _ in range(brokers):
            try:
                await self._connect_to(*self.mqtt.broker(self._broker_index))
            except BrokerError as exc:
                failures.append(f"{self.label}: {exc}")
                if len(failures) < brokers:
                    log.warning("MQTT broker %s, trying the next one", failures[-1])
                    self._broker_index += 1
                continue
            self._established = True
            return
        self._broker_index += 1  # the next round starts where this one did
        raise BrokerError(failures[0] if brokers == 1 else "; ".join(failures))

    async def _connect_to(self, host: str, port: int) -> None:
        try:
            client = self._make_client()
            connection = _Connection(client, self._acked, self._dispatch_message)
            # connect() resolves, opens the TCP (and TLS) connection and queues
            # CONNECT: blocking work, so off the loop.
            opening = asyncio.get_running_loop().run_in_executor(
                None, client.connect, host, port, self.mqtt.keepalive_seconds
            )
            try:
                await asyncio.shield(opening)
            except asyncio.CancelledError:
                # The thread cannot be stopped: it goes on to open a socket
                # whose hooks have this loop watch it, on a connection nobody
                # holds. Close it once the thread is done.
                opening.add_done_callback(lambda _: _abandon(connection, opening))
                raise
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise BrokerError(str(exc) or type(exc).__name__) from exc
        self._connection = connection
        self._misc = asyncio.create_task(connection.misc_timer(), name="mqtt-misc")
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a
            # cancel that lands in the turn the CONNACK does, and the stopping
            # gateway then waited forever for this task.
            async with asyncio.timeout(CONNACK_TIMEOUT_SECONDS):
                await asyncio.shield(connection.connected)
        except TimeoutError as exc:
            self.release()
            raise BrokerError("no CONNACK from the broker") from exc
        except BaseException:
            self.release()
            raise
        for topic, _handler in self._subscriptions:
            client.subscribe(topic, qos=1)

    def _make_client(self) -> mqtt.Client:
        version = mqtt.MQTTv5 if self.mqtt.protocol_version == 5 else mqtt.MQTTv311
        client = LeanClient(
            CallbackAPIVersion.VERSION2,
            client_id=self.mqtt.client_id,
            protocol=version,
            clean_session=None if version == mqtt.MQTTv5 else True,
        )
        client.max_inflight_messages_set(self.mqtt.publish_window)
        client.max_queued_messages_set(0)
        if self.mqtt.username is not None:
            client.username_pw_set(self.mqtt.username, self.mqtt.password)
        will_topic, will_payload = self.will
        client.will_set(will_topic, will_payload, qos=1, retain=True)
        if self.mqtt.use_tls:
            tls = self.mqtt.tls
            client.tls_set(
                ca_certs=str(tls.ca_file) if tls and tls.ca_file else None,
                certfile=str(tls.cert_file) if tls and tls.cert_file else None,
                keyfile=str(tls.key_file) if tls and tls.key_file else None,
                cert_reqs=ssl.CERT_NONE if tls and tls.insecure else ssl.CERT_REQUIRED,
            )
            if tls and tls.insecure:
                client.tls_insecure_set(True)
        return client

    @property
    def is_open(self) -> bool:
        """Connected (CONNACK received) and not closed since."""
        connection = self._connection
        return (
            connection is not None
            and connection.connected.done()
            and connection.connected.exception() is None
            and not connection.closed.done()
        )

    @property
    def closed(self) -> asyncio.Future[None]:
        """Resolved when the current connection is gone (already resolved without one)."""
        connection = self._connection
        if connection is None:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            future.set_result(None)
            return future
        return connection.closed

    @property
    def keepalive_expired(self) -> bool:
        """The current (or last) connection went because the broker fell silent."""
        return self._connection is not None and self._connection.keepalive_expired

    def close(self) -> None:
        """Stop watching the socket and let everyone waiting on `closed` go on.

        Ends a connection from our side at once (a later `disconnect` still
        tells the broker); also how a test makes the running connection end.
        """
        if self._misc is not None:
            self._misc.cancel()
        if self._connection is not None:
            self._connection.close()

    async def disconnect(self) -> None:
        """Send DISCONNECT and wait (bounded) for paho to close the socket after it.

        A clean DISCONNECT suppresses the will; closing before it went out would
        make the broker publish the will.
        """
        connection = self._connection
        if connection is None:
            return
        connection.client.disconnect()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DISCONNECT_WAIT_SECONDS):
                await asyncio.shield(connection.closed)
        self.close()

    def release(self) -> None:
        """After a connection ended: close it, and DISCONNECT if that is still possible.

        What is known about it (`keepalive_expired`) stays until the next `connect`.
        """
        if self._established and len(self.mqtt.urls) > 1:
            # Lost (or left) a broker we were connected to: the next try goes
            # to another one, likely alive (a cluster's other node, a standby).
            self._broker_index += 1
        self._established = False
        self.close()
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.client.disconnect()

    # -- messages --------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, *, retain: bool) -> int:
        """Hand one QoS 1 message to paho; its message id.

        `LinkClosedError` when there is no connection, `PublishRefusedError`
        when the client library refuses the message itself.
        """
        connection = self._connection
        if connection is None or connection.closed.done():
            raise LinkClosedError("not connected")
        try:
            info = connection.client.publish(topic, payload, qos=1, retain=retain)
        except ValueError as exc:  # paho's refusal: topic or payload too long, ...
            raise PublishRefusedError(str(exc)) from exc
        if info.rc in (MQTTErrorCode.MQTT_ERR_NO_CONN, MQTTErrorCode.MQTT_ERR_CONN_LOST):
            raise LinkClosedError(mqtt.error_string(info.rc))
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise PublishRefusedError(mqtt.error_string(info.rc))
        return info.mid

    async def publish_acked(self, topic: str, payload: bytes, *, retain: bool) -> None:
        """Publish and wait for the PUBACK (`BrokerError` if refused or the link goes)."""
        connection = self._connection
        mid = self.publish(topic, payload, retain=retain)
        assert connection is not None
        future = connection.loop.create_future()
        connection.waiting[mid] = future
        try:
            if connection.closed.done():
                raise LinkClosedError("the connection closed before the PUBACK")
            await future
        finally:
            connection.waiting.pop(mid, None)

    def _acked(self, connection: _Connection, mid: int, reason: ReasonCode) -> None:
        # Message ids are per connection: a late PUBACK of an earlier one is not ours.
        if connection is self._connection:
            self.on_ack(mid, reason)

    # -- subscriptions ---------------------------------------------------------

    def subscribe(self, topic: str, handler: MessageHandler) -> None:
        """Call `handler(topic, payload, retained)` on the loop for each message on
        `topic` (wildcards allowed), on this and every later connection."""
        self._subscriptions.append((topic, handler))
        if self.is_open:
            assert self._connection is not None
            self._connection.client.subscribe(topic, qos=1)

    def _dispatch_message(self, topic: str, payload: bytes, retained: bool) -> None:
        for pattern, handler in self._subscriptions:
            if mqtt.topic_matches_sub(pattern, topic):
                try:
                    handler(topic, payload, retained)
                except Exception:
                    log.exception("handler for %s failed", topic)
