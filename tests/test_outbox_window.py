"""The outbox window without a broker: acknowledgements, isolation strikes, dead letters.

A real outbox file; the connection's part (message ids in flight, PUBACKs,
drops) is played by calling the window's public seams the way the link does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from gateway.metrics import Metrics
from gateway.mqtt.window import DEAD_LETTER_AFTER_DROPS, OutboxWindow
from gateway.outbox import EventDraft, MessageDraft, Outbox, StoredMessage
from tests.helpers import sample

SUCCESS = ReasonCode(PacketTypes.PUBACK, identifier=0)
PAYLOAD_FORMAT_INVALID = ReasonCode(PacketTypes.PUBACK, identifier=0x99)


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.db", 10_000_000)
    box.open()
    try:
        box.append_batch(
            [
                EventDraft(
                    f"ev-{n}",
                    "cam",
                    (
                        MessageDraft(f"lpr/cam/event/{n}", b"{}", retain=False),
                        MessageDraft("lpr/cam/last", f"{n}".encode(), retain=True),
                    ),
                    time.time(),
                )
                for n in range(2)
            ]
        )
        yield box
    finally:
        box.close()


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(1)
    yield pool
    pool.shutdown(wait=True)


def rows(outbox: Outbox) -> list[StoredMessage]:
    return outbox.read_after(0, 10)


async def test_an_acknowledged_row_leaves_the_outbox_and_a_retained_one_reaches_the_copy(
    outbox: Outbox, executor: ThreadPoolExecutor
) -> None:
    metrics = Metrics()
    retained: list[tuple[str, bytes]] = []
    window = OutboxWindow(4, metrics, outbox, executor, lambda t, p: retained.append((t, p)))
    event, last = rows(outbox)[:2]
    window.inflight.update({1: event, 2: last})
    window.on_ack(2, SUCCESS)
    window.on_ack(1, SUCCESS)
    window.on_ack(3, SUCCESS)  # not an outbox row (a state message): ignored
    await window.flush_acks()
    assert retained == [("lpr/cam/last", b"0")]
    assert [m.event_id for m in rows(outbox)] == ["ev-1", "ev-1"]
    assert sample(metrics, "lpr_mqtt_messages_published_total") == 2
    assert not window.inflight


async def test_a_message_the_broker_refuses_sets_its_event_aside(
    outbox: Outbox, executor: ThreadPoolExecutor
) -> None:
    metrics = Metrics()
    window = OutboxWindow(4, metrics, outbox, executor, lambda t, p: None)
    window.inflight[1] = rows(outbox)[0]
    window.on_ack(1, PAYLOAD_FORMAT_INVALID)
    await window.bury_condemned()
    (letter,) = outbox.dead_letters()
    assert letter.event_id == "ev-0"
    assert "broker refused it" in letter.reason
    assert sample(metrics, "lpr_mqtt_messages_refused_total") == 1
    assert [m.event_id for m in rows(outbox)] == ["ev-1", "ev-1"]


async def test_only_drops_with_one_message_alone_in_flight_count_and_never_a_keepalive(
    outbox: Outbox, executor: ThreadPoolExecutor
) -> None:
    window = OutboxWindow(4, Metrics(), outbox, executor, lambda t, p: None)
    suspect, other = rows(outbox)[:2]

    def drop(*in_flight: StoredMessage, keepalive: bool = False) -> None:
        window.inflight.update(enumerate(in_flight, start=1))
        window.connection_lost(keepalive_expired=keepalive, count_drop=True)
        assert not window.inflight  # the next connection starts from the outbox

    drop(suspect, other)  # two in flight: starts isolation, blames no one
    for _ in range(DEAD_LETTER_AFTER_DROPS):
        drop(suspect, keepalive=True)  # a silent broker is nobody's fault
    window.inflight[1] = suspect
    window.connection_lost(keepalive_expired=False, count_drop=False)  # we were stopping
    for _ in range(DEAD_LETTER_AFTER_DROPS - 1):
        drop(suspect)
    await window.bury_condemned()
    assert outbox.dead_letter_events == 0
    drop(suspect)
    await window.bury_condemned()
    (letter,) = outbox.dead_letters()
    assert letter.event_id == "ev-0"
    assert f"{DEAD_LETTER_AFTER_DROPS} times running" in letter.reason
