"""A paho client with cheaper I/O: large payloads sent without copying, acks read in bulk.

**Sending.** paho builds every PUBLISH as one `bytearray`: header, topic, message id and
then the payload appended (`packet.extend(payload)`), and each socket write
sends `packet[pos:]`, another copy of what is left. For a 300 KB scene that
is two copies of the picture per message on the event loop, with the GIL held:
py-spy put 30 % of the gateway's loop time in those two lines under the
pipeline bench (bench/RESULTS.md, "paho's copies").

Here a large payload is queued as two writes: the header (a few dozen bytes)
and a `memoryview` of the payload, which paho slices without copying. The
bytes on the wire are the same; MQTT does not care how a packet is split
between `send` calls, and the two writes sit next to each other in paho's
queue because the link drives paho from the event loop thread alone (paho
writes when the loop says the socket is writable, never from `publish`).

**Receiving.** paho reads every packet with a `recv` for its first byte, one
per byte of its length and one for the rest: three system calls for each
4-byte PUBACK, four PUBACKs per read, plus a ReasonCode and a Properties
object built for each. py-spy put paho's reading at 29 % of the loop's time
under the pipeline bench (bench/RESULTS.md, "paho's reading"). Here the
socket is read up to `READ_AHEAD_BYTES` at a time and paho's byte-sized reads
are served from that; a plain PUBACK (2 bytes: success, no properties) is
handled without paho's decoder, with one shared success code.

Both override private methods of paho-mqtt 2.x. `ZERO_COPY_AVAILABLE` and
`BULK_READ_AVAILABLE` say whether the installed paho still looks the way this
code expects; if it does not, the client falls back to paho's own paths
(slower, the same bytes), and `tests/test_mqtt_lean_client.py` fails so that
an upgrade is noticed.
"""

from __future__ import annotations

import inspect
import struct
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

# Below this a copy costs less than a second queue entry.
ZERO_COPY_MIN_BYTES = 16 * 1024
# What one socket read may take; paho's reads are then served from it.
READ_AHEAD_BYTES = 64 * 1024


def _paho_has(methods: dict[str, tuple[str, ...] | None]) -> bool:
    """Whether paho's Client still has these private methods, each with exactly
    these parameters (None: any)."""
    for name, parameters in methods.items():
        method = getattr(mqtt.Client, name, None)
        if not callable(method):
            return False
        if parameters is not None and tuple(inspect.signature(method).parameters) != parameters:
            return False
    return True


ZERO_COPY_AVAILABLE = _paho_has(
    {
        "_send_publish": (
            "self",
            "mid",
            "topic",
            "payload",
            "qos",
            "retain",
            "dup",
            "info",
            "properties",
        ),
        "_packet_queue": None,
        "_pack_remaining_length": None,
        "_pack_str16": None,
        "_packet_write": None,
    }
)
BULK_READ_AVAILABLE = _paho_has(
    {
        "_sock_recv": ("self", "bufsize"),
        "_handle_pubackcomp": ("self", "cmd"),
        "_do_on_publish": ("self", "mid", "reason_code", "properties"),
        "loop_read": ("self", "max_packets"),
    }
)


_INSTANCE_ATTRIBUTES = ("_sock", "_transport", "_protocol", "_thread")
_READ_INSTANCE_ATTRIBUTES = ("_sock", "_in_packet", "_out_message_mutex", "_out_messages")
# Every plain PUBACK means the same: success, no properties. paho makes a new
# pair per ack; its callback (ours) only reads them.
_PUBACK_SUCCESS = ReasonCode(PacketTypes.PUBACK)
_NO_PROPERTIES = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]


class LeanClient(mqtt.Client):
    """`paho.mqtt.client.Client`, with large QoS 1 payloads queued by reference and
    the socket read in bulk."""

    zero_copy_publishes = 0  # how many went the zero-copy way (tests read it)
    plain_pubacks = 0  # how many PUBACKs skipped paho's decoder (tests read it)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._zero_copy = ZERO_COPY_AVAILABLE and all(
            hasattr(self, name) for name in _INSTANCE_ATTRIBUTES
        )
        self._bulk_read = BULK_READ_AVAILABLE and all(
            hasattr(self, name) for name in _READ_INSTANCE_ATTRIBUTES
        )
        self._read_ahead = b""  # read from the socket, not yet handed to paho
        self._read_pos = 0
        self._draining = False  # handling what was read ahead: no new socket reads

    # -- receiving ---------------------------------------------------------------

    def _sock_recv(self, bufsize: int) -> bytes:
        if not self._bulk_read:
            return super()._sock_recv(bufsize)
        if self._read_pos >= len(self._read_ahead):
            if self._draining:
                raise BlockingIOError  # the rest waits for the socket's next turn
            # Raises as paho's does (BlockingIOError: nothing to read now).
            data = super()._sock_recv(max(bufsize, READ_AHEAD_BYTES))
            if len(data) <= bufsize:
                return data  # b"" (the broker closed) included
            self._read_ahead, self._read_pos = data, 0
        start = self._read_pos
        self._read_pos = end = min(start + bufsize, len(self._read_ahead))
        return self._read_ahead[start:end]

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        # paho stops after as many packets as it has messages in flight; what
        # is read ahead would then wait for the socket's next bytes (a retained
        # message behind a SUBACK: until the next keep-alive). Go on until it
        # is all handled, without reading the socket again meanwhile: each
        # round takes at least one packet from it, and a broker that keeps
        # sending cannot hold the loop here (the socket stays readable).
        rc = super().loop_read(max_packets)
        self._draining = True
        try:
            while (
                rc == MQTTErrorCode.MQTT_ERR_SUCCESS
                and self._read_pos < len(self._read_ahead)
                and self._sock is not None
            ):
                rc = super().loop_read(max_packets)
        finally:
            self._draining = False
        return rc

    def _handle_pubackcomp(self, cmd: Any) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        if not self._bulk_read or cmd != "PUBACK" or len(packet) != 2:
            return super()._handle_pubackcomp(cmd)
        # Two bytes: the message id alone (MQTT 3.1.1, and MQTT 5's success
        # without properties). Anything else goes through paho's decoder.
        mid = (packet[0] << 8) | packet[1]
        type(self).plain_pubacks += 1
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, _PUBACK_SUCCESS, _NO_PROPERTIES)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    # -- sending -----------------------------------------------------------------

    def _send_publish(
        self,
        mid: int,
        topic: bytes,
        payload: bytes | bytearray = b"",
        qos: int = 0,
        retain: bool = False,
        dup: bool = False,
        info: mqtt.MQTTMessageInfo | None = None,
        properties: Any = None,
    ) -> MQTTErrorCode:
        # QoS 0 is left to paho: it completes a QoS 0 message when its queue
        # entry is written, and there would be two. A bytearray is left too:
        # its owner could change it (or could not resize it) while it is queued.
        if (
            not self._zero_copy
            or qos == 0
            or type(payload) is not bytes
            or len(payload) < ZERO_COPY_MIN_BYTES
            or not isinstance(topic, bytes)
            or self._sock is None
            or self._transport != "tcp"
            or self._thread is not None  # paho's own thread could queue a ping in between
        ):
            return super()._send_publish(mid, topic, payload, qos, retain, dup, info, properties)
        header = bytearray((mqtt.PUBLISH | ((dup & 0x1) << 3) | (qos << 1) | retain,))
        remaining_length = 2 + len(topic) + 2 + len(payload)
        packed_properties = b""
        if self._protocol == mqtt.MQTTv5:
            packed_properties = b"\x00" if properties is None else properties.pack()
            remaining_length += len(packed_properties)
        self._pack_remaining_length(header, remaining_length)
        self._pack_str16(header, topic)
        header += struct.pack("!H", mid)
        header += packed_properties
        # Both halves are queued whatever the first returns: a header without
        # its payload would corrupt the stream for the next packet.
        header_rc = self._packet_queue(mqtt.PUBLISH, header, mid, qos, info)
        # paho's type says bytes; it only ever takes len() and slices of it.
        view: Any = memoryview(payload)
        payload_rc = self._packet_queue(mqtt.PUBLISH, view, mid, qos, info)
        type(self).zero_copy_publishes += 1
        return payload_rc if header_rc == MQTTErrorCode.MQTT_ERR_SUCCESS else header_rc
