"""TCP-type cameras: the gateway connects, logs in, and receives one frame per read.

One task per camera keeps a session alive: connect (with a timeout), log in,
feed the bytes to the sans-IO `FrameDecoder`, hand each recognition to the
pipeline, and reconnect with capped, jittered backoff after any drop. A
refused login is a configuration problem: said once, retried slowly.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway.adapters.base import (
    AdapterContext,
    Outcome,
    ParseErrors,
    ReconnectPolicy,
    SessionProgress,
    supervise,
)
from gateway.adapters.feed import FeedProtocol
from gateway.codecs.tcp import (
    FRAME_EVENTS,
    NEED_DATA,
    BadLoginReply,
    ClientEvent,
    CorruptFrame,
    EndOfStream,
    GarbageSkipped,
    LoginAccepted,
    LoginRefused,
    LoginReplyIgnored,
    Recognition,
    StreamBroken,
    TcpClient,
    UnknownCommand,
    UnreadableRecognition,
    effective_color_table,
    to_plate_event,
)
from gateway.config import TcpCameraConfig
from gateway.event import PlateEvent, utc_now
from gateway.log_limit import RateLimitedLog

log = logging.getLogger(__name__)

SOURCE = "tcp"
# A session busy with a read stops reading its socket past this many bytes
# received and not yet decoded: what a session held back by the pipeline keeps
# (plus one socket read, and the frame being received). A 1 MiB limit let 1,000
# sessions hold up to 2 GB.
PAUSE_ABOVE_BYTES = 128 * 1024
# Reads of one camera in the pipeline at once (not yet durable in the outbox).
MAX_PENDING_SUBMITS = 16
# Bytes of reads decoded and not yet taken by the pipeline, over every TCP
# camera (~100 reads of 330 KB): past it a session waits before reading on, so
# the memory is bounded by backpressure, not by the number of sessions.
INTAKE_BUDGET_BYTES = 32 * 1024 * 1024
# capture_dir bounds: files kept per camera, bytes kept per file.
CAPTURE_MAX_FILES = 100
CAPTURE_MAX_FILE_BYTES = 4 * 1024 * 1024


async def run(
    ctx: AdapterContext,
    cameras: Sequence[TcpCameraConfig],
    policy: ReconnectPolicy | None = None,
) -> None:
    """Serve every TCP camera until cancelled."""
    policy = policy or ReconnectPolicy()
    budget = IntakeBudget(INTAKE_BUDGET_BYTES)
    async with asyncio.TaskGroup() as group:
        for camera in cameras:
            group.create_task(
                CameraSession(ctx, camera, policy, budget).run(), name=f"tcp-camera-{camera.id}"
            )


class IntakeBudget:
    """Bytes in flight shared by many sessions, granted first come, first served.

    A grant larger than the whole budget is given when nothing else is in
    flight, so one oversized frame cannot wedge its camera.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    def _fits(self, size: int) -> bool:
        return self.used == 0 or self.used + size <= self.limit

    async def acquire(self, size: int) -> None:
        if not self._waiters and self._fits(size):
            self.used += size
            return
        waiter = (size, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await waiter[1]
        except asyncio.CancelledError:
            if waiter[1].done() and not waiter[1].cancelled():
                self.release(size)  # granted, but the session is going away
            else:
                self._waiters.remove(waiter)
                self._grant()  # a smaller waiter behind it may fit now
            raise

    def release(self, size: int) -> None:
        self.used -= size
        self._grant()

    def _grant(self) -> None:
        while self._waiters and self._fits(self._waiters[0][0]):
            size, future = self._waiters.popleft()
            self.used += size
            future.set_result(None)


class CameraSession:
    """One camera's sessions; the retries are `supervise`'s, the protocol the codec's."""

    def __init__(
        self,
        ctx: AdapterContext,
        camera: TcpCameraConfig,
        policy: ReconnectPolicy,
        budget: IntakeBudget,
    ) -> None:
        self.ctx = ctx
        self._budget = budget
        self.camera = camera
        self.policy = policy
        self.metrics = ctx.metrics
        self.color_table = effective_color_table(ctx.config.color_table)
        self._auth_reported = False
        self._capture_full_reported = False
        # Every complaint the camera can repeat goes through this, keyed by
        # (camera, kind): a hostile stream cannot turn its bytes into log lines.
        # The metrics keep the exact counts.
        self._complaints = RateLimitedLog(log, on_suppressed=self.metrics.log_lines_suppressed.inc)
        self._parse_errors = ParseErrors(self.metrics, SOURCE, camera.id, self._complaints)
        self._submit_slots = asyncio.Semaphore(MAX_PENDING_SUBMITS)
        self._pending_submits: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        await supervise(self.camera.id, self.session, self.policy, self.ctx, source=SOURCE, log=log)

    async def session(self, progress: SessionProgress) -> Outcome:
        cam, camera = self.camera.id, self.camera
        client = TcpClient(camera.username, camera.password)
        bytes_metric = self.metrics.camera_bytes.labels(camera=cam)

        def feed(data: memoryview | bytes) -> None:
            if data:
                bytes_metric.inc(len(data))
            client.receive_data(data)

        stream = await progress.connect_protocol(
            camera.host,
            camera.port,
            camera.connect_timeout_seconds,
            lambda: FeedProtocol(feed, lambda: client.unconsumed, PAUSE_ABOVE_BYTES),
        )
        if stream is None:
            return Outcome.CONNECT_FAILED
        log.info("camera %s: connected to %s:%d, logging in", cam, camera.host, camera.port)
        try:
            client.start()
            stream.write(client.data_to_send())  # one small frame: no need to drain
            return await self._receive(stream, client, progress)
        finally:
            stream.close()

    async def _receive(
        self, stream: FeedProtocol, client: TcpClient, progress: SessionProgress
    ) -> Outcome:
        """Decode → dispatch until the session ends; wait for bytes when the codec
        needs them (the stream feeds them to `client` as they come)."""
        frames_metric = self.metrics.camera_frames.labels(camera=self.camera.id)
        stall = _FrameStall(
            client, asyncio.get_running_loop().time, self.policy.frame_stall_seconds
        )
        while True:
            event = client.next_event()
            if event is NEED_DATA:
                if stall.overdue():
                    continue  # the decoder rescans the abandoned frame's bytes
                outcome = await self._wait(stream, client, stall)
                if outcome is not None:
                    return outcome
                continue
            stall.reset()
            if isinstance(event, FRAME_EVENTS):
                frames_metric.inc()
            outcome = await self._dispatch(event, client, progress)
            if outcome is not None:
                return outcome

    async def _wait(
        self, stream: FeedProtocol, client: TcpClient, stall: _FrameStall
    ) -> Outcome | None:
        """Until bytes came (or the end) or the frame stall is due: None; or how
        the session ends when the camera says nothing in time."""
        camera = self.camera
        logged_in = client.logged_in
        timeout = camera.idle_timeout_seconds if logged_in else camera.connect_timeout_seconds
        stall_in = stall.remaining()
        try:
            # asyncio.timeout, not wait_for: no task per read (3.11's wait_for
            # wraps the read in one), which showed in profiles.
            async with asyncio.timeout(timeout if stall_in is None else min(timeout, stall_in)):
                await stream.wait()
                return None
        except TimeoutError:
            if stall_in is not None and stall_in < timeout:
                return None  # the frame is overdue: handled before the next read
            if logged_in:
                log.warning("camera %s: no data for %g s, reconnecting", camera.id, timeout)
                return Outcome.CLOSED
            log.warning("camera %s: no login reply within %g s", camera.id, timeout)
            return Outcome.FAILED

    async def _dispatch(
        self, event: ClientEvent, client: TcpClient, progress: SessionProgress
    ) -> Outcome | None:
        """Act on one event; how the session ends, if it does."""
        cam = self.camera.id
        if isinstance(event, Recognition):
            await self._recognition(event, progress)
        elif isinstance(event, GarbageSkipped):
            self._garbage(event)
        elif isinstance(event, CorruptFrame):
            await self._corrupt_frame(event)
        elif isinstance(event, UnknownCommand):
            self._unknown_command(event.command, event.length, event.offset)
        elif isinstance(event, UnreadableRecognition):
            await self._unreadable_recognition(event)
        elif isinstance(event, LoginReplyIgnored):
            log.debug("camera %s: another login reply ignored", cam)
        elif isinstance(event, LoginAccepted | LoginRefused | BadLoginReply):
            return self._login_reply(event, progress)
        elif isinstance(event, StreamBroken):
            self._parse_errors.report(
                event.kind,
                "%s at offset %d; dropping the connection",
                event.detail,
                event.offset,
                level=logging.ERROR,
            )
            return Outcome.CLOSED
        elif isinstance(event, EndOfStream):
            log.info("camera %s: connection closed by the camera", cam)
            # The state before the end: the client is CLOSED now.
            return Outcome.CLOSED if progress.is_established else Outcome.FAILED
        return None

    def _garbage(self, event: GarbageSkipped) -> None:
        cam = self.camera.id
        self.metrics.bytes_skipped.labels(camera=cam).inc(event.count)
        if event.starts_region:
            # One loss of sync is one parse error, however long it lasts and
            # however many false headers it holds.
            self._parse_errors.report(
                "garbage",
                "garbage between frames at stream offset %d, "
                "resynchronising (bytes skipped: lpr_camera_bytes_skipped_total)",
                event.offset,
            )

    async def _corrupt_frame(self, event: CorruptFrame) -> None:
        self._parse_errors.report(
            event.reason,
            "corrupt %s frame at offset %d (%s, DATA_SIZE %d), resynchronising",
            f"0x{event.command:04x}",
            event.offset,
            event.reason,
            event.data_size,
        )
        await self._capture(event.raw, event.reason)

    def _login_reply(
        self, event: LoginAccepted | LoginRefused | BadLoginReply, progress: SessionProgress
    ) -> Outcome | None:
        cam = self.camera.id
        if isinstance(event, BadLoginReply):
            self._parse_errors.report(event.kind, "unreadable login reply: %s", event.detail)
            return Outcome.FAILED
        if isinstance(event, LoginRefused):
            return self._login_refused(event)
        if self._auth_reported:
            log.info("camera %s: login accepted again", cam)
        self._auth_reported = False
        log.info("camera %s: logged in, waiting for reads", cam)
        progress.established()
        return None

    def _login_refused(self, event: LoginRefused) -> Outcome:
        cam = self.camera.id
        if not event.unauthorized:
            self._complaints.warning(
                (cam, "login_status"), "camera %s: login answered with status %d", cam, event.status
            )
            return Outcome.FAILED
        self.metrics.camera_auth_failures.labels(camera=cam).inc()
        if not self._auth_reported:
            log.error(
                "camera %s: login refused (401) for user %r: check username and password "
                "in the config; retrying every %g s",
                cam,
                self.camera.username,
                self.policy.auth_retry_seconds,
            )
            self._auth_reported = True
            self.ctx.login_refused(cam, f"login refused (401) for user {self.camera.username!r}")
        return Outcome.AUTH_FAILED

    async def _unreadable_recognition(self, event: UnreadableRecognition) -> None:
        frame, exc = event.frame, event.error
        self._parse_errors.report(
            exc.kind, "unreadable recognition frame at offset %d: %s", frame.offset, exc
        )
        await self._capture(frame.encode(), exc.kind)

    async def _recognition(self, event: Recognition, progress: SessionProgress) -> None:
        cam, frame, result = self.camera.id, event.frame, event.result
        for issue in result.issues:
            self._parse_errors.report(
                issue.kind,
                "recognition frame at offset %d: %s: %s",
                frame.offset,
                issue.kind,
                issue.detail,
            )
        if result.issues:
            await self._capture(frame.encode(), result.issues[0].kind)
        event_out = to_plate_event(
            result, camera=cam, received=utc_now(), color_table=self.color_table
        )
        progress.delivered()
        # events_received is counted by the pipeline on submit.
        # The camera cannot be acknowledged, so there is no reason to wait for
        # each read to be durable before reading the next: up to
        # MAX_PENDING_SUBMITS go into the pipeline at once (it keeps their
        # order) and share the outbox's group commits, within the budget all
        # TCP cameras share. Beyond that the read loop waits: the backpressure
        # reaches the socket.
        size = frame.size
        await self._submit_slots.acquire()
        try:
            await self._budget.acquire(size)
        except BaseException:
            self._submit_slots.release()
            raise
        task = asyncio.create_task(self._submit(event_out, size))
        self._pending_submits.add(task)
        task.add_done_callback(self._pending_submits.discard)

    async def _submit(self, event: PlateEvent, size: int) -> None:
        try:
            admission = await self.ctx.submit(event)
            if not admission.taken:
                self._complaints.warning(
                    (self.camera.id, "not_taken"),
                    "camera %s: read %s (%s) not taken: %s",
                    self.camera.id,
                    event.id,
                    event.plate,
                    admission.value,
                )
        finally:
            self._budget.release(size)
            self._submit_slots.release()

    def _unknown_command(self, command: int, length: int, offset: int) -> None:
        self._parse_errors.report(
            "unknown_command",
            "frame with unknown command 0x%04x (%d bytes) at offset %d skipped whole",
            command,
            length,
            offset,
        )

    async def _capture(self, raw: bytes, kind: str) -> None:
        directory = self.camera.capture_dir
        if directory is None:
            return
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        name = f"{_capture_prefix(self.camera.id)}{stamp}-{time.time_ns() % 10**9:09d}-{kind}.bin"
        try:
            written = await asyncio.to_thread(_write_capture, directory, self.camera.id, name, raw)
        except OSError as exc:
            self._complaints.warning(
                (self.camera.id, "capture_failed"),
                "camera %s: cannot save capture in %s: %s",
                self.camera.id,
                directory,
                exc,
            )
            return
        if written:
            log.info("camera %s: saved the frame as %s", self.camera.id, directory / name)
        elif not self._capture_full_reported:
            self._capture_full_reported = True
            log.warning(
                "camera %s: capture_dir %s holds %d files; not saving more",
                self.camera.id,
                directory,
                CAPTURE_MAX_FILES,
            )


class _FrameStall:
    """When the frame being awaited began: the codec has no clock, so the adapter
    decides when a frame is overdue and asks the codec to give up on it.

    A DATA_SIZE that is plausible but wrong would hold every later frame until
    that many bytes came.
    """

    __slots__ = ("_client", "_clock", "_limit", "_now", "_started")

    def __init__(self, client: TcpClient, clock: Callable[[], float], limit: float) -> None:
        self._client = client
        self._clock = clock
        self._limit = limit
        self._started: float | None = None
        self._now = 0.0

    def reset(self) -> None:
        self._started = None

    def overdue(self) -> bool:
        """Called when the codec needs data: start, check or clear the watch;
        abandon the partial frame if it is overdue."""
        self._now = now = self._clock()
        if not self._client.awaiting_frame:
            self._started = None
        elif self._started is None:
            self._started = now
        elif now - self._started >= self._limit:
            self._started = None
            self._client.abandon_partial_frame()
            return True
        return False

    def remaining(self) -> float | None:
        """Seconds until the awaited frame is overdue (as of `overdue()`), or None."""
        if self._started is None:
            return None
        return self._started + self._limit - self._now


def _capture_prefix(camera_id: str) -> str:
    """`<camera id>.`: a dot is not allowed in ids, so no camera's prefix is the
    start of another's file names (`gate.` never matches `gate-in.…`)."""
    return f"{camera_id}."


def _write_capture(directory: Path, camera_id: str, name: str, raw: bytes) -> bool:
    """Write one capture unless `camera_id` already has its quota of files there.

    Counted by the full camera id: cameras may share a capture_dir, and one
    camera's files must not use up another's quota.
    """
    directory.mkdir(parents=True, exist_ok=True)
    prefix = _capture_prefix(camera_id)
    if sum(1 for _ in directory.glob(f"{prefix}*.bin")) >= CAPTURE_MAX_FILES:
        return False
    (directory / name).write_bytes(raw[:CAPTURE_MAX_FILE_BYTES])
    return True
