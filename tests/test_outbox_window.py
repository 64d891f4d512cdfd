"""The outbox window without a broker: acknowledgements, isolation strikes, dead letters.

A real outbox file; the connection's part (message ids in flight, PUBACKs,
drops) is played by calling the window's public seams the way the link does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from gateway.metrics import Metrics
from gateway.mqtt.window import DEAD_LETTER_AFTER_DROPS, OutboxWindow
from gateway.outbox import EventDraft, MessageDraft, Outbox, OutboxWriter, StoredMessage
from tests.helpers import eventually, sample

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
    retained: list[str] = []
    window = OutboxWindow(4, metrics, outbox, executor, retained.append)
    event, last = rows(outbox)[:2]
    window.inflight.update({1: event, 2: last})
    window.on_ack(2, SUCCESS)
    window.on_ack(1, SUCCESS)
    window.on_ack(3, SUCCESS)  # not an outbox row (a state message): ignored
    await window.flush_acks()
    assert retained == ["lpr/cam/last"]
    assert [m.event_id for m in rows(outbox)] == ["ev-1", "ev-1"]
    assert sample(metrics, "lpr_mqtt_messages_published_total") == 2
    assert not window.inflight


async def test_a_message_the_broker_refuses_sets_its_event_aside(
    outbox: Outbox, executor: ThreadPoolExecutor
) -> None:
    metrics = Metrics()
    window = OutboxWindow(4, metrics, outbox, executor, lambda t: None)
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
    window = OutboxWindow(4, Metrics(), outbox, executor, lambda t: None)
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


# -- fresh messages from memory, the outbox when memory cannot say ------------------


class InstantAckLink:
    """The link's seams the window uses; the broker's PUBACK follows each publish."""

    def __init__(self, window: OutboxWindow) -> None:
        self.window = window
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sent: list[StoredMessage] = []
        self._next_mid = 0

    def publish(self, topic: str, payload: bytes, retain: bool) -> int:
        self._next_mid += 1
        mid = self._next_mid
        asyncio.get_running_loop().call_soon(self.window.on_ack, mid, SUCCESS)
        return mid

    def close(self) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class CountingReads:
    """The outbox, counting how often rows are read back."""

    def __init__(self, outbox: Outbox) -> None:
        self.reads = 0
        self._read_after = outbox.read_after
        outbox.read_after = self.read_after  # type: ignore[method-assign]

    def read_after(self, seq: int, limit: int, max_bytes: int | None = None) -> list[StoredMessage]:
        self.reads += 1
        return self._read_after(seq, limit, max_bytes)


def draft(n: int, size: int = 10) -> EventDraft:
    return EventDraft(
        f"new-{n}",
        "cam",
        (
            MessageDraft(f"lpr/cam/image/{n}", bytes([n % 256]) * size, retain=False),
            MessageDraft(f"lpr/cam/event/{n}", b"{}", retain=False),
        ),
        time.time(),
    )


# The rows the `outbox` fixture stored before the window starts.
BACKLOG = ["lpr/cam/event/0", "lpr/cam/last", "lpr/cam/event/1", "lpr/cam/last"]


def new_topics(count: int) -> list[str]:
    return [t for n in range(count) for t in (f"lpr/cam/image/{n}", f"lpr/cam/event/{n}")]


@contextlib.asynccontextmanager
async def dispatching(window: OutboxWindow, link: InstantAckLink) -> AsyncIterator[None]:
    """The window serving `link` inside the block; the link closed after it."""
    task = asyncio.create_task(window.dispatch_until_closed(link))  # type: ignore[arg-type]
    try:
        yield
    finally:
        link.close()
        await task


async def publishing(window: OutboxWindow, link: InstantAckLink, count: int) -> list[str]:
    """Run the window on `link` until `count` messages were sent; their topics."""
    sent: list[str] = []
    original = link.publish

    def publish(topic: str, payload: bytes, retain: bool) -> int:
        sent.append(topic)
        return original(topic, payload, retain)

    link.publish = publish  # type: ignore[method-assign]
    async with dispatching(window, link):
        await eventually(lambda: len(sent) >= count, what=f"{count} messages sent")
    return sent


async def test_fresh_messages_are_sent_from_memory_after_the_backlog_is_read(
    outbox: Outbox, executor: ThreadPoolExecutor
) -> None:
    window = OutboxWindow(4, Metrics(), outbox, executor, lambda t: None)
    counting = CountingReads(outbox)
    writer = OutboxWriter(outbox, executor, on_stored=window.offer)
    writer_task = asyncio.create_task(writer.run())
    link = InstantAckLink(window)
    run = asyncio.create_task(publishing(window, link, 4 + 2 * 20))
    await eventually(lambda: counting.reads >= 1, what="the backlog read")
    for n in range(20):
        assert await (await writer.enqueue(draft(n)))
    sent = await run
    await writer.close()
    await writer_task
    # The four rows from before, then every new message in the order written ...
    assert sent == BACKLOG + new_topics(20)
    # ... and the new ones never read back: one read found the backlog, and at most
    # one more (short) read may have raced the first commit.
    assert counting.reads <= 2


async def test_messages_past_the_memory_bound_are_read_from_the_outbox_in_order(
    outbox: Outbox, executor: ThreadPoolExecutor
) -> None:
    window = OutboxWindow(4, Metrics(), outbox, executor, lambda t: None, fresh_max_bytes=5_000)
    writer = OutboxWriter(outbox, executor, on_stored=window.offer)
    writer_task = asyncio.create_task(writer.run())
    # The broker is away: 30 events of 1 KB pile up, past the 5 KB kept in memory.
    for n in range(30):
        assert await (await writer.enqueue(draft(n, size=1000)))
    await writer.close()
    await writer_task
    sent = await publishing(window, InstantAckLink(window), 4 + 2 * 30)
    assert sent == BACKLOG + new_topics(30)  # every one, once, in order


async def test_a_backlog_past_the_read_ahead_bytes_is_read_whole_and_in_order(
    outbox: Outbox, executor: ThreadPoolExecutor
) -> None:
    # Each read from the outbox stops at 3 KB: short of the rows asked for, but
    # not caught up, so the next read must still come from the outbox.
    window = OutboxWindow(
        4, Metrics(), outbox, executor, lambda t: None, read_ahead_max_bytes=3_000
    )
    counting = CountingReads(outbox)
    outbox.append_batch([draft(n, size=1000) for n in range(20)])  # written before: not fresh
    sent = await publishing(window, InstantAckLink(window), 4 + 2 * 20)
    assert sent == BACKLOG + new_topics(20)
    assert counting.reads > 20 // 3  # a few rows a read, as bounded


class SilentLink(InstantAckLink):
    """A broker that acknowledges only when told to."""

    def __init__(self, window: OutboxWindow) -> None:
        super().__init__(window)
        self.sent_mids: list[int] = []

    def publish(self, topic: str, payload: bytes, retain: bool) -> int:
        self._next_mid += 1
        self.sent_mids.append(self._next_mid)
        return self._next_mid

    async def sent_exactly(self, count: int) -> None:
        """`count` messages sent in all, and no more while nothing else is acknowledged."""
        await eventually(lambda: len(self.sent_mids) >= count, what=f"{count} messages sent")
        await asyncio.sleep(0.05)  # time to send more, if the window would
        assert len(self.sent_mids) == count


async def test_the_window_holds_no_more_bytes_in_flight_than_its_bound(
    outbox: Outbox, executor: ThreadPoolExecutor
) -> None:
    window = OutboxWindow(
        100, Metrics(), outbox, executor, lambda t: None, inflight_max_bytes=2_500
    )
    outbox.append_batch([draft(n, size=1000) for n in range(5)])
    link = SilentLink(window)
    async with dispatching(window, link):
        # The backlog's four rows (6 bytes), then 1000 + 2 + 1000 + 2 + 1000: the
        # message that reaches 2,500 goes, the next waits for a PUBACK.
        await link.sent_exactly(4 + 5)
        window.on_ack(link.sent_mids[4], SUCCESS)  # image 0's 1000 bytes
        # 2,010 bytes in flight: event 2 (2 bytes) and image 3 (1000) go.
        await link.sent_exactly(4 + 5 + 2)


async def test_isolation_after_a_drop_lasts_twice_the_messages_in_flight(
    outbox: Outbox, executor: ThreadPoolExecutor
) -> None:
    window = OutboxWindow(8, Metrics(), outbox, executor, lambda t: None)
    suspect, other = rows(outbox)[:2]
    window.inflight.update({1: suspect, 2: other})
    window.connection_lost(keepalive_expired=False, count_drop=True)
    outbox.append_batch([draft(n) for n in range(8)])
    link = InstantAckLink(window)
    in_flight_at_publish: list[int] = []
    original = link.publish

    def publish(topic: str, payload: bytes, retain: bool) -> int:
        in_flight_at_publish.append(len(window.inflight))
        return original(topic, payload, retain)

    link.publish = publish  # type: ignore[method-assign]
    await publishing(window, link, 4 + 2 * 8)
    # Two were in flight at the drop: four go alone, then the window opens
    # (not 2 x its size of 8: a wide window would crawl after every drop).
    assert in_flight_at_publish[:5] == [0, 0, 0, 0, 0]
    assert in_flight_at_publish[5] == 1


async def test_messages_in_flight_count_against_the_memory_bound(
    outbox: Outbox, executor: ThreadPoolExecutor
) -> None:
    window = OutboxWindow(100, Metrics(), outbox, executor, lambda t: None, fresh_max_bytes=5_000)
    counting = CountingReads(outbox)
    writer = OutboxWriter(outbox, executor, on_stored=window.offer)
    writer_task = asyncio.create_task(writer.run())
    link = SilentLink(window)  # nothing is acknowledged: what goes out stays in flight
    try:
        async with dispatching(window, link):
            await link.sent_exactly(4)
            assert await (await writer.enqueue(draft(0, size=3000)))
            await link.sent_exactly(6)
            reads = counting.reads
            # 3,008 bytes in flight + 2,502 new ones are past 5,000: not kept in memory.
            assert await (await writer.enqueue(draft(1, size=2500)))
            await link.sent_exactly(8)
            assert counting.reads > reads
    finally:
        await writer.close()
        await writer_task


async def test_a_replay_holds_no_more_than_the_read_ahead_bound_in_memory(
    outbox: Outbox, executor: ThreadPoolExecutor
) -> None:
    window = OutboxWindow(
        100, Metrics(), outbox, executor, lambda t: None, read_ahead_max_bytes=2_500
    )
    outbox.append_batch([draft(n, size=1000) for n in range(10)])  # a backlog on disk
    link = SilentLink(window)
    async with dispatching(window, link):
        # The four rows (6 bytes), then 1000 + 2 + 1000 + 2 + 1000: the row that
        # crosses 2,500 is still read; nothing more while they are all in flight.
        await link.sent_exactly(4 + 5)
        window.on_ack(link.sent_mids[4], SUCCESS)  # image 0: 2,010 bytes left in flight
        # 490 bytes of room: event 2 (2 bytes), then image 3 crosses it.
        await link.sent_exactly(4 + 5 + 2)


async def test_nothing_is_kept_in_memory_without_a_connection(
    outbox: Outbox, executor: ThreadPoolExecutor
) -> None:
    window = OutboxWindow(1, Metrics(), outbox, executor, lambda t: None)
    writer = OutboxWriter(outbox, executor, on_stored=window.offer)
    writer_task = asyncio.create_task(writer.run())
    try:
        # Stored before any connection: the first one reads them from the outbox.
        for n in range(3):
            assert await (await writer.enqueue(draft(n, size=1000)))
        assert window.fresh_bytes == 0
        link = SilentLink(window)  # one in flight, never acknowledged: the rest waits
        async with dispatching(window, link):
            await link.sent_exactly(1)
            assert await (await writer.enqueue(draft(3, size=1000)))
            assert window.fresh_bytes == 1002  # connected: kept for publishing
        assert window.fresh_bytes == 0  # the connection went: the outbox has them
    finally:
        await writer.close()
        await writer_task
