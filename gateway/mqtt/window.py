"""The outbox window: which outbox rows go out next, and which the broker acknowledged.

Rows go out in `seq` order with up to `publish_window` QoS 1 messages in
flight, read ahead of the window so that a PUBACK is answered with the next
publish at once. Acknowledged rows are deleted from the outbox in batches;
after a disconnect the next connection starts over from the oldest row left.

Fresh rows come from memory: the outbox writer hands each committed batch to
`offer`, and while the window has caught up with the outbox it publishes
those, never reading back the payloads it just wrote. SQLite is read when
memory cannot say what comes next: at each new connection (the rows in
flight without a PUBACK, a replay after a restart or an outage) and after
more than `FRESH_MAX_BYTES` piled up unsent or in flight (they are dropped
from memory, not from the outbox). A read that returns less than asked for
means caught up.

No message stalls delivery: one the client library refuses, or a topic that
is not valid, is condemned and its whole event moved to the outbox's
dead-letter table. One after which the broker keeps dropping the connection
is found by publishing one message at a time after a drop ("isolation"); when
the same message is alone in flight at `DEAD_LETTER_AFTER_DROPS` drops
running, its event is dead-lettered. A keep-alive timeout never counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from paho.mqtt.reasoncodes import ReasonCode

from gateway.metrics import Metrics
from gateway.mqtt.link import LinkClosedError, MqttLink, PublishRefusedError
from gateway.outbox import Outbox, StoredMessage
from gateway.topics import topic_problem

log = logging.getLogger(__name__)

ACK_FLUSH_SECONDS = 0.02
# Drops of the connection, running, with the same message alone in flight,
# before its event is set aside as a dead letter.
DEAD_LETTER_AFTER_DROPS = 3
# Committed messages kept in memory for publishing, with those in flight; past
# this (the broker is away or slow) they are read back from the outbox when their
# turn comes. With 8 MiB, 64 clients' group commits overflowed it ~20 times a
# second: 2 of 3 events were read back, at 1.45 CPU ms per event against 1.28
# (bench/RESULTS.md).
FRESH_MAX_BYTES = 32 * 1024 * 1024
# Payload bytes in flight at most, besides the message count: a slow broker
# cannot make the window pin more than this in memory. One message always
# goes, however large.
INFLIGHT_MAX_BYTES = 16 * 1024 * 1024
# Rows read back from the outbox (a replay after an outage) held at once, read
# ahead and in flight together; the row that crosses it is still taken. A
# window of 128 read back 2 x 128 rows ahead: +28 MB peak in a 5 s outage.
READ_AHEAD_MAX_BYTES = 8 * 1024 * 1024
# A broker can keep the connection, and answer pings, yet acknowledge nothing
# more: RabbitMQ 3.10 does after a message over its `max_message_size` (the
# MQTT connection's AMQP channel is closed; no PUBACK, no disconnect). No PUBACK
# for this long with messages in flight: the connection is dropped, a drop like
# any other (isolation, then a dead letter if one message is the cause).
ACK_TIMEOUT_SECONDS = 60.0


class OutboxWindow:
    """What to send next from the outbox, what was acknowledged, what is set aside."""

    def __init__(
        self,
        publish_window: int,
        metrics: Metrics,
        outbox: Outbox,
        executor: Executor,
        on_retained_ack: Callable[[str], None],
        fresh_max_bytes: int = FRESH_MAX_BYTES,
        ack_timeout: float = ACK_TIMEOUT_SECONDS,
        inflight_max_bytes: int = INFLIGHT_MAX_BYTES,
        read_ahead_max_bytes: int = READ_AHEAD_MAX_BYTES,
    ) -> None:
        self.size = publish_window
        self.inflight_max_bytes = inflight_max_bytes
        self.read_ahead_max_bytes = read_ahead_max_bytes
        self.ack_timeout = ack_timeout
        # When the messages in flight last made progress (the first went out
        # or a PUBACK came); None while nothing is in flight.
        self._waiting_since: float | None = None
        self.fresh_max_bytes = fresh_max_bytes
        self.metrics = metrics
        self.outbox = outbox
        self.executor = executor
        # A retained row the broker acknowledged: the outbox keeps it as the
        # topic's retained state, and the bridge state forgets its own copy.
        self.on_retained_ack = on_retained_ack
        # mid → outbox row in flight on the current connection
        self.inflight: dict[int, StoredMessage] = {}
        self._inflight_bytes = 0
        self._wake = asyncio.Event()
        self._ack_signal = asyncio.Event()
        self._pending_acks: list[StoredMessage] = []
        # Dead letters: messages whose event must be set aside (reason, metric kind).
        self._condemned: list[tuple[StoredMessage, str, str]] = []
        # Hear each event set aside (event id, camera, reason): the bridge event feed.
        self.dead_letter_listeners: list[Callable[[str, str, str], None]] = []
        # seq → connection drops running with that message alone in flight
        self._strikes: dict[int, int] = {}
        # After a drop with messages in flight, this many are published one at a
        # time, so that a message the broker refuses is alone when it drops us.
        self._isolate_remaining = 0
        # Committed messages not yet taken for publishing, in `seq` order.
        self._fresh: deque[StoredMessage] = deque()
        self._fresh_bytes = 0
        # Whether the outbox may hold rows past the read cursor that `_fresh`
        # lacks: then the next rows are read from SQLite.
        self._outbox_first = True
        # Times `_fresh` was given up: a read that ran meanwhile proves nothing.
        self._fresh_dropped = 0
        # Whether a connection is being served: without one, nothing is kept in
        # memory (the next connection reads the outbox from its oldest row anyway).
        self._dispatching = False

    @property
    def fresh_bytes(self) -> int:
        """Payload bytes of committed messages held in memory, waiting to go out."""
        return self._fresh_bytes

    def wake(self) -> None:
        """New messages are in the outbox."""
        self._wake.set()

    def offer(self, messages: list[StoredMessage]) -> None:
        """Messages just committed to the outbox (in `seq` order): publish them from memory."""
        size = sum(len(m.payload) for m in messages)
        if (
            not self._dispatching
            or self._fresh_bytes + self._inflight_bytes + size > self.fresh_max_bytes
        ):
            # The broker is away or behind: let these wait on disk only.
            self._drop_fresh()
        else:
            self._fresh.extend(messages)
            self._fresh_bytes += size
        self._wake.set()

    def _drop_fresh(self) -> None:
        self._fresh.clear()
        self._fresh_bytes = 0
        self._outbox_first = True
        self._fresh_dropped += 1

    # -- the link's ack callback -------------------------------------------------

    def on_ack(self, mid: int, reason: ReasonCode) -> None:
        """A PUBACK (or an MQTT 5 refusal) for message id `mid` on the current link."""
        message = self.inflight.pop(mid, None)
        if message is None:
            return  # a state message (bridge/availability): not from the outbox
        self._inflight_bytes -= len(message.payload)
        self._waiting_since = time.monotonic() if self.inflight else None
        if reason.is_failure:
            # MQTT 5 broker refused this message for good (e.g. too large): resending
            # would fail the same way and block the queue behind it. Its event is
            # set aside, kept for an operator.
            self.metrics.messages_refused.inc()
            self._condemn(message, f"broker refused it: {reason}", "broker_refused")
            return
        self._acknowledged(message)

    def _acknowledged(self, message: StoredMessage) -> None:
        self._pending_acks.append(message)
        if message.retain:
            self.on_retained_ack(message.topic)
        if self._strikes:
            self._strikes.pop(message.seq, None)
        if self._isolate_remaining > 0:
            self._isolate_remaining -= 1
        self.metrics.messages_published.inc()
        if message.last_of_event:
            self.metrics.child(self.metrics.events_published, message.camera).inc()
            self.metrics.publish_latency.observe(max(0.0, time.time() - message.accepted_at))
        self._ack_signal.set()

    # -- sending -----------------------------------------------------------------

    async def dispatch_until_closed(self, link: MqttLink) -> None:
        """Publish outbox rows in `seq` order, keeping the window full.

        Rows are read ahead of the window (up to twice its size; rows read
        back from the outbox up to `read_ahead_max_bytes` with those in
        flight) so that a PUBACK is answered with the next publish at once,
        not after a trip to the outbox thread.
        """
        self._dispatching = True
        try:
            await self._dispatch(link)
        finally:
            # Until the next connection: that one starts from the outbox's oldest row.
            self._dispatching = False
            self._drop_fresh()

    async def _dispatch(self, link: MqttLink) -> None:
        loop = asyncio.get_running_loop()
        closed = link.closed
        ready: deque[StoredMessage] = deque()
        # A new connection starts from the oldest row left: first delete what the
        # broker acknowledged on the last one, so it is not sent again.
        await self.flush_acks()
        read_cursor = 0
        self._outbox_first = True
        while not closed.done():
            # Cleared before any await, so a wake-up that lands meanwhile is kept.
            self._wake.clear()
            self._ack_signal.clear()
            if self._condemned:
                buried = {m.event_id for m, _, _ in self._condemned}
                await self.bury_condemned()
                ready = deque(m for m in ready if m.event_id not in buried)
                self._forget_fresh(buried)
                continue
            window = self._current_size()
            while ready and self._has_room(window):
                message = ready.popleft()
                try:
                    refusal = self._publish_row(link, message)
                except LinkClosedError:
                    link.close()
                    return
                if refusal is not None:
                    self._condemn(message, *refusal)
                    break
            if self._condemned:
                continue
            window = self._current_size()
            read_ahead_full = False
            if len(ready) < window:
                wanted = 2 * window - len(ready)
                if self._outbox_first:
                    # Rows read back (a replay): those read ahead and those in
                    # flight stay within the read-ahead bound together.
                    budget = (
                        self.read_ahead_max_bytes
                        - self._inflight_bytes
                        - sum(len(m.payload) for m in ready)
                    )
                    read_ahead_full = budget <= 0
                    batch = []
                    if not read_ahead_full:
                        dropped = self._fresh_dropped
                        batch = await loop.run_in_executor(
                            self.executor, self.outbox.read_after, read_cursor, wanted, budget
                        )
                        if closed.done():
                            return
                        if (
                            len(batch) < wanted
                            and sum(len(m.payload) for m in batch) < budget
                            and dropped == self._fresh_dropped
                        ):
                            self._outbox_first = False  # caught up: memory has what follows
                else:
                    batch = self._take_fresh(read_cursor, wanted)
                if batch:
                    read_cursor = batch[-1].seq
                    ready.extend(batch)
                    continue
            try:
                # asyncio.timeout, not wait_for: no extra task per wait on this path.
                async with asyncio.timeout(self._ack_time_left()):
                    waiting_for_acks = bool(ready) or read_ahead_full
                    await _wait_any(self._ack_signal if waiting_for_acks else self._wake, closed)
            except TimeoutError:
                if self._ack_time_left() != 0.0:
                    # Acknowledged meanwhile (the wait was for new messages, with
                    # the timer of the publishes before): not a broker that went quiet.
                    continue
                log.warning(
                    "no PUBACK from the MQTT broker for %.0fs with %d messages in flight: "
                    "dropping the connection",
                    self.ack_timeout,
                    len(self.inflight),
                )
                link.close()
                return

    def _has_room(self, window: int) -> bool:
        """Whether one more message may go out: under the count and the bytes."""
        inflight = self.inflight
        return len(inflight) < window and (
            not inflight or self._inflight_bytes < self.inflight_max_bytes
        )

    def _ack_time_left(self) -> float | None:
        """How long the messages in flight may still wait for a PUBACK (None: none in flight)."""
        if self._waiting_since is None or not self.inflight:
            return None
        return max(0.0, self._waiting_since + self.ack_timeout - time.monotonic())

    def _take_fresh(self, after_seq: int, limit: int) -> list[StoredMessage]:
        """Up to `limit` fresh messages past `after_seq`; older ones (read from the
        outbox meanwhile) are dropped."""
        fresh = self._fresh
        taken: list[StoredMessage] = []
        while fresh and len(taken) < limit:
            message = fresh.popleft()
            self._fresh_bytes -= len(message.payload)
            if message.seq > after_seq:
                taken.append(message)
        return taken

    def _forget_fresh(self, event_ids: set[str]) -> None:
        kept = deque(m for m in self._fresh if m.event_id not in event_ids)
        self._fresh_bytes = sum(len(m.payload) for m in kept)
        self._fresh = kept

    def _current_size(self) -> int:
        """One message at a time while isolating after a drop, else the full window."""
        return 1 if self._isolate_remaining > 0 else self.size

    def _publish_row(self, link: MqttLink, message: StoredMessage) -> tuple[str, str] | None:
        """Hand one outbox row to the link: None when it is in flight, else (reason,
        kind) to set its event aside. `LinkClosedError` when the connection is gone."""
        problem = topic_problem(message.topic)
        if problem is not None:
            return f"invalid topic: {problem}", "invalid_topic"
        if message.unreadable is not None:
            return f"its payload cannot be read back: {message.unreadable}", "unreadable"
        try:
            mid = link.publish(message.topic, message.payload, retain=message.retain)
        except PublishRefusedError as exc:
            return f"the MQTT client refused it: {exc}", "client_refused"
        if not self.inflight:
            self._waiting_since = time.monotonic()
        self.inflight[mid] = message
        self._inflight_bytes += len(message.payload)
        return None

    async def drain(self, closed: asyncio.Future[None], seconds: float) -> None:
        """Wait (at most `seconds`) for the messages in flight to be acknowledged."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while self.inflight and not closed.done():
                    self._ack_signal.clear()
                    await _wait_any(self._ack_signal, closed)

    # -- after a disconnect --------------------------------------------------------

    def connection_lost(self, *, keepalive_expired: bool, count_drop: bool) -> None:
        """The connection went; what was in flight without a PUBACK is still in the
        outbox, and the next connection starts from the oldest row that is left.

        With `count_drop` (we were connected and are not stopping) a drop with
        messages in flight may be the fault of one of them: isolate, and strike
        the message that was alone in flight.
        """
        if self.inflight and count_drop and not keepalive_expired:
            self._note_drop()
        self.inflight.clear()
        self._inflight_bytes = 0
        self._waiting_since = None

    def _note_drop(self) -> None:
        if self._isolate_remaining > 0 and len(self.inflight) == 1:
            (message,) = self.inflight.values()
            strikes = self._strikes.get(message.seq, 0) + 1
            self._strikes[message.seq] = strikes
            if strikes >= DEAD_LETTER_AFTER_DROPS:
                self._condemn(
                    message,
                    f"the broker dropped the connection {strikes} times running "
                    "with this message alone in flight",
                    "broker_dropped",
                )
        # The message the broker dropped us for is one of those in flight,
        # which go out again first: twice as many, one at a time, find it.
        self._isolate_remaining = 2 * len(self.inflight)

    # -- dead letters --------------------------------------------------------------

    def _condemn(self, message: StoredMessage, reason: str, kind: str) -> None:
        self._condemned.append((message, reason, kind))
        self._ack_signal.set()

    async def bury_condemned(self) -> None:
        """Move the events of condemned messages to the dead-letter table."""
        while self._condemned:
            message, reason, kind = self._condemned.pop(0)
            self._strikes.pop(message.seq, None)
            moved = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.outbox.dead_letter_event, message.event_id, message.seq, reason
            )
            self.metrics.outbox_dead_letters.set(self.outbox.dead_letter_events)
            self.metrics.outbox_depth.set(self.outbox.pending_events)
            self.metrics.outbox_bytes.set(self.outbox.pending_bytes)
            if moved:
                self.metrics.dead_lettered.labels(reason=kind).inc()
                log.error(
                    "event %s of camera %s set aside as a dead letter (%d messages, not "
                    "published): %s on %r. Everything else keeps flowing; see "
                    "`lpr-gateway outbox dead-letters list`",
                    message.event_id,
                    message.camera,
                    moved,
                    reason,
                    message.topic[:200],
                )
                for listener in self.dead_letter_listeners:
                    try:
                        listener(message.event_id, message.camera, reason)
                    except Exception:
                        log.exception("dead-letter listener failed")

    # -- acknowledged rows leave the outbox ------------------------------------------

    async def flush_acks(self) -> None:
        if not self._pending_acks:
            return
        acks, self._pending_acks = self._pending_acks, []
        await asyncio.get_running_loop().run_in_executor(
            self.executor, self.outbox.acknowledge, acks
        )
        self.metrics.outbox_depth.set(self.outbox.pending_events)
        self.metrics.outbox_bytes.set(self.outbox.pending_bytes)

    async def flush_acks_forever(self) -> None:
        while True:
            await asyncio.sleep(ACK_FLUSH_SECONDS)
            try:
                await self.flush_acks()
            except Exception:
                log.exception("could not delete acknowledged rows from the outbox")


async def _wait_any(*waitables: asyncio.Event | asyncio.Future[None]) -> None:
    tasks: list[asyncio.Future[Any]] = []
    for w in waitables:
        if isinstance(w, asyncio.Event):
            if w.is_set():
                return
            tasks.append(asyncio.ensure_future(w.wait()))
        else:
            if w.done():
                return
            tasks.append(w)
    owned = [t for t in tasks if isinstance(t, asyncio.Task)]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in owned:
            t.cancel()
