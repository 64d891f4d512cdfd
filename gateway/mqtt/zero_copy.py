"""A paho client that sends large QoS 1 payloads without copying them.

paho builds every PUBLISH as one `bytearray`: header, topic, message id and
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

This overrides one private method of paho-mqtt 2.x. `ZERO_COPY_AVAILABLE`
says whether the installed paho still looks the way this code expects; if it
does not, the client publishes through paho's own path (slower, the same
bytes), and `tests/test_mqtt_zero_copy.py` fails so that an upgrade is
noticed.
"""

from __future__ import annotations

import inspect
import struct
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

# Below this a copy costs less than a second queue entry.
ZERO_COPY_MIN_BYTES = 16 * 1024

_EXPECTED_PARAMETERS = (
    "self",
    "mid",
    "topic",
    "payload",
    "qos",
    "retain",
    "dup",
    "info",
    "properties",
)


def _paho_internals_as_expected() -> bool:
    """Whether paho still has the private pieces this client relies on."""
    client = mqtt.Client
    send_publish = getattr(client, "_send_publish", None)
    if send_publish is None:
        return False
    if tuple(inspect.signature(send_publish).parameters) != _EXPECTED_PARAMETERS:
        return False
    return all(
        callable(getattr(client, name, None))
        for name in ("_packet_queue", "_pack_remaining_length", "_pack_str16", "_packet_write")
    )


ZERO_COPY_AVAILABLE = _paho_internals_as_expected()


_INSTANCE_ATTRIBUTES = ("_sock", "_transport", "_protocol", "_thread")


class ZeroCopyClient(mqtt.Client):
    """`paho.mqtt.client.Client`, with large QoS 1 payloads queued by reference."""

    zero_copy_publishes = 0  # how many went the zero-copy way (tests read it)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._zero_copy = ZERO_COPY_AVAILABLE and all(
            hasattr(self, name) for name in _INSTANCE_ATTRIBUTES
        )

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
