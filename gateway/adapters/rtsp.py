"""RTSP-type cameras: the gateway plays the ONVIF metadata track and fetches the plate pictures.

One task per camera: connect (with a timeout), OPTIONS → DESCRIBE → SETUP of
the metadata track only (interleaved on the RTSP connection) → PLAY, then feed
the bytes to the sans-IO `RtspClient` and `RtpReassembler`, parse each document
with the ONVIF parser and hand reads to the pipeline. The picture each read
names is fetched at once, concurrently with the stream; reads are still
submitted in the order the camera sent them. Plates of the scene description
(Profile M `tt:Frame` objects) go through the camera's `SceneTracker`: one
read per object, when it has left. Keep-alive before the session
timeout, idle detection, TEARDOWN at shutdown, reconnect with capped jittered
backoff; refused credentials are a configuration problem, said once and
retried slowly.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import secrets
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import yarl

from gateway.adapters.base import (
    AdapterContext,
    Outcome,
    ParseErrors,
    ReconnectPolicy,
    SessionProgress,
    supervise,
)
from gateway.codecs import onvif
from gateway.codecs.rtp import (
    NEED_DATA as NO_DOCUMENT_YET,
)
from gateway.codecs.rtp import (
    RtpDocument,
    RtpDocumentDropped,
    RtpPacketRejected,
    RtpReassembler,
)
from gateway.codecs.rtsp import (
    NEED_DATA,
    AuthenticationFailed,
    Authenticator,
    AuthVerdict,
    ClientEvent,
    KeepAliveAcknowledged,
    MetadataPacket,
    RequestFailed,
    RtspClient,
    SessionStarted,
    Signal,
    TeardownComplete,
    split_url_credentials,
)
from gateway.codecs.scene_tracker import (
    FinishedTrack,
    NotificationMatch,
    SceneTracker,
    TrackEnd,
)
from gateway.config import OtherEvents, RtspCameraConfig
from gateway.errors import CameraProtocolError
from gateway.event import AnyEvent, Image, Resolution, normalize_plate, utc_now
from gateway.log_limit import RateLimitedLog
from gateway.pipeline import Admission

log = logging.getLogger(__name__)

SOURCE = "rtsp"
DEFAULT_RTSP_PORT = 554
READ_SIZE = 64 * 1024
USER_AGENT = "lpr-gateway"
# OPTIONS → PLAY must be done within this (a server that answers nothing).
HANDSHAKE_TIMEOUT_SECONDS = 15.0
# Keep-alive at this fraction of the session timeout (RFC 2326 servers drop at 1.0).
KEEPALIVE_FRACTION = 0.5
MIN_KEEPALIVE_SECONDS = 1.0
TEARDOWN_WAIT_SECONDS = 0.5
# Plate pictures: per-camera concurrent fetches, size bound, attempts.
IMAGE_FETCH_CONCURRENCY = 4
MAX_PICTURE_BYTES = 5_000_000
IMAGE_FETCH_ATTEMPTS = 2
# Reads waiting for their picture or their turn; beyond it the stream waits (backpressure).
MAX_PENDING_READS = 64
JPEG_MAGIC = b"\xff\xd8\xff"


async def run(
    ctx: AdapterContext,
    cameras: Sequence[RtspCameraConfig],
    policy: ReconnectPolicy | None = None,
) -> None:
    """Serve every RTSP camera until cancelled."""
    policy = policy or ReconnectPolicy()
    timeout = aiohttp.ClientTimeout(total=None)
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=IMAGE_FETCH_CONCURRENCY)
    async with (
        aiohttp.ClientSession(timeout=timeout, connector=connector, auto_decompress=False) as http,
        asyncio.TaskGroup() as group,
    ):
        for camera in cameras:
            group.create_task(
                CameraSession(ctx, camera, http, policy).run(), name=f"rtsp-camera-{camera.id}"
            )


def _cnonce() -> str:
    return secrets.token_hex(8)


class CameraSession:
    """The session loop of one camera; the protocol lives in the codecs."""

    def __init__(
        self,
        ctx: AdapterContext,
        camera: RtspCameraConfig,
        http: aiohttp.ClientSession,
        policy: ReconnectPolicy,
    ) -> None:
        self.ctx = ctx
        self.camera = camera
        self.http = http
        url, url_user, url_password = split_url_credentials(camera.url)
        self.url = url
        self.username = camera.username if camera.username is not None else url_user
        self.password = camera.password if camera.username is not None else url_password
        parts = urlsplit(url)
        self.host = parts.hostname or ""
        self.port = parts.port or DEFAULT_RTSP_PORT
        http_host = f"[{self.host}]" if ":" in self.host else self.host
        self.picture_base = f"http://{http_host}:{camera.http_port}"
        self.picture_auth = Authenticator(self.username, self.password, _cnonce)
        self.fetch_limit = asyncio.Semaphore(IMAGE_FETCH_CONCURRENCY)
        self.pending: set[asyncio.Task[None]] = set()
        self._last_submit: asyncio.Task[None] | None = None
        self.policy = policy
        self._auth_failure_said = False
        m = ctx.metrics
        # Every complaint the camera can repeat goes through this, keyed by
        # (camera, kind); the metrics keep the exact counts.
        self._complaints = RateLimitedLog(log, on_suppressed=m.log_lines_suppressed.inc)
        self._parse_errors = ParseErrors(m, SOURCE, camera.id, self._complaints)
        self._frames = m.camera_frames.labels(camera=camera.id)
        self._bytes = m.camera_bytes.labels(camera=camera.id)
        # Scene objects of this camera; its clock is time.monotonic().
        self.tracker = SceneTracker(
            end_seconds=camera.track_end_seconds,
            max_seconds=camera.track_max_seconds,
            max_objects=camera.track_max_objects,
        )
        self.scene_resolution = (
            Resolution(*camera.scene_resolution) if camera.scene_resolution else None
        )

    async def run(self) -> None:
        try:
            await supervise(
                self.camera.id, self.session, self.policy, self.ctx, source=SOURCE, log=log
            )
        finally:
            for task in list(self.pending):
                task.cancel()

    # -- one session -------------------------------------------------------------------

    async def session(self, progress: SessionProgress) -> Outcome:
        """Connect, play, receive until the session ends."""
        camera = self.camera
        # Objects of an earlier session (one that crashed) cannot be followed
        # into this one: their best readings go out now.
        await self._scene_finished(self.tracker.flush())
        connection = await progress.connect(self.host, self.port, camera.connect_timeout_seconds)
        if connection is None:
            return Outcome.CONNECT_FAILED
        reader, writer = connection
        client = RtspClient(
            self.url,
            username=self.username,
            password=self.password,
            cnonce=_cnonce,
            user_agent=USER_AGENT,
        )
        state = _SessionState(client, reader, writer, progress)
        try:
            outcome = await self._converse(state)
            # ObjectIds do not survive the session: every tracked object's best
            # reading now, rather than a second read for it after the reconnect.
            await self._scene_finished(self.tracker.flush())
            return outcome
        except asyncio.CancelledError:
            await self._teardown(state)
            raise
        finally:
            if state.read_task is not None and not state.read_task.done():
                state.read_task.cancel()
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def _converse(self, state: _SessionState) -> Outcome:
        """Read → feed → dispatch until the session ends, keeping its deadlines."""
        client = state.client
        client.start()
        state.writer.write(client.data_to_send())
        now = time.monotonic()
        state.handshake_deadline = now + HANDSHAKE_TIMEOUT_SECONDS
        state.idle_deadline = now + self.camera.idle_timeout_seconds
        state.reassembler = RtpReassembler(max_document_bytes=onvif.MAX_DOCUMENT_BYTES)
        stop_wait = asyncio.ensure_future(self.ctx.stopping.wait())
        try:
            while True:
                now = time.monotonic()
                outcome = self._keep_time(state, now)
                if outcome is not None:
                    return outcome
                await self._scene_finished(self.tracker.expire(now))
                data = await self._read(state, stop_wait, now)
                if isinstance(data, Outcome):
                    return data
                if data is None:
                    continue  # a deadline is due
                outcome = await self._feed(state, data)
                if outcome is not None:
                    return outcome
                # Backpressure from a slow socket: never let our own writes pile up.
                await state.writer.drain()
        finally:
            stop_wait.cancel()

    def _keep_time(self, state: _SessionState, now: float) -> Outcome | None:
        """End the session past a deadline; send the keep-alive when it is due."""
        camera = self.camera
        if not state.playing and now >= state.handshake_deadline:
            log.warning(
                "camera %s: no PLAY within %.0f s (state %s); reconnecting",
                camera.id,
                HANDSHAKE_TIMEOUT_SECONDS,
                state.client.state.name,
            )
            return Outcome.FAILED
        if now >= state.idle_deadline:
            log.warning(
                "camera %s: nothing received for %.0f s; reconnecting",
                camera.id,
                camera.idle_timeout_seconds,
            )
            return Outcome.CLOSED
        if state.playing and now >= state.keepalive_at:
            state.client.send_keepalive()
            state.writer.write(state.client.data_to_send())
            state.keepalive_at = now + state.keepalive_every
        return None

    async def _read(
        self, state: _SessionState, stop_wait: asyncio.Future[Any], now: float
    ) -> bytes | Outcome | None:
        """The next bytes; None when a deadline comes first; how the session ends
        if the camera closed it or the gateway stops."""
        wake_at = min(state.idle_deadline, state.keepalive_at)
        scene_due = self.tracker.next_deadline()
        if scene_due is not None:
            wake_at = min(wake_at, scene_due)
        if not state.playing:
            wake_at = min(wake_at, state.handshake_deadline)
        if state.read_task is None:
            state.read_task = asyncio.ensure_future(state.reader.read(READ_SIZE))
        done, _ = await asyncio.wait(
            {state.read_task, stop_wait},
            timeout=max(0.0, wake_at - now),
            return_when=asyncio.FIRST_COMPLETED,
        )
        if stop_wait in done:
            await self._teardown(state)
            return Outcome.STOPPED
        if state.read_task not in done:
            return None
        try:
            data = state.read_task.result()
        except OSError as exc:
            log.warning("camera %s: connection error: %s", self.camera.id, exc)
            return Outcome.CLOSED
        finally:
            state.read_task = None
        if not data:
            log.warning("camera %s: the camera closed the connection", self.camera.id)
            return Outcome.CLOSED
        return data

    async def _feed(self, state: _SessionState, data: bytes) -> Outcome | None:
        """Hand the bytes to the client and act on its events; send what it queued."""
        camera, client = self.camera, state.client
        self._bytes.inc(len(data))
        state.idle_deadline = time.monotonic() + camera.idle_timeout_seconds
        client.receive_data(data)
        while True:
            try:
                event = client.next_event()
            except CameraProtocolError as exc:
                self._parse_errors.report(
                    exc.kind, "RTSP protocol error (%s): %s; reconnecting", exc.kind, exc.detail
                )
                return Outcome.FAILED
            if isinstance(event, Signal):
                break
            outcome = await self._dispatch(state, event)
            if outcome is not None:
                return outcome
        pending_out = client.data_to_send()
        if pending_out:
            state.writer.write(pending_out)
        return None

    async def _dispatch(self, state: _SessionState, event: ClientEvent) -> Outcome | None:
        """Act on one client event; how the session ends, if it does."""
        camera = self.camera
        if isinstance(event, MetadataPacket):
            await self._on_packet(state, event.data)
        elif isinstance(event, SessionStarted):
            self._on_session_started(state, event)
        elif isinstance(event, KeepAliveAcknowledged):
            log.debug("camera %s: keep-alive answered %d", camera.id, event.status)
        elif isinstance(event, AuthenticationFailed):
            self._on_auth_failed(event)
            return Outcome.AUTH_FAILED
        elif isinstance(event, RequestFailed):
            self._complaints.warning(
                (camera.id, f"refused_{event.method}"),
                "camera %s: %s refused: %d %s; reconnecting",
                camera.id,
                event.method,
                event.status,
                event.reason,
            )
            return Outcome.FAILED
        elif isinstance(event, TeardownComplete):
            return Outcome.STOPPED
        return None

    def _on_session_started(self, state: _SessionState, event: SessionStarted) -> None:
        camera = self.camera
        state.playing = True
        for kind in event.issues:
            self._parse_errors.report(
                kind, "PLAY answer not fully readable (%s); playing anyway", kind
            )
        state.reassembler = RtpReassembler(
            max_document_bytes=onvif.MAX_DOCUMENT_BYTES, payload_type=event.track.payload_type
        )
        state.reassembler.expect_first_sequence(event.first_sequence)
        timeout = event.session.effective_timeout
        state.keepalive_every = max(MIN_KEEPALIVE_SECONDS, timeout * KEEPALIVE_FRACTION)
        state.keepalive_at = time.monotonic() + state.keepalive_every
        self._auth_failure_said = False
        state.progress.established()
        log.info(
            "camera %s: playing metadata track %s (payload type %d); "
            "session timeout %d s, keep-alive by %s every %.1f s",
            camera.id,
            event.track.control_url,
            event.track.payload_type,
            timeout,
            event.keepalive_method,
            state.keepalive_every,
        )

    def _on_auth_failed(self, event: AuthenticationFailed) -> None:
        camera = self.camera
        self.ctx.metrics.camera_auth_failures.labels(camera=camera.id).inc()
        if event.verdict is AuthVerdict.NO_CREDENTIALS:
            why = "the camera requires credentials and none are configured"
        elif event.verdict is AuthVerdict.UNSUPPORTED:
            why = "the camera asks for an authentication scheme the gateway cannot answer"
        else:
            why = f"the camera refused the configured credentials (realm {event.realm!r})"
        if not self._auth_failure_said:
            self._auth_failure_said = True
            self.ctx.login_refused(camera.id, f"{why} on {event.method}")
            log.error(
                "camera %s: %s on %s; check username/password; retrying every %.0f s",
                camera.id,
                why,
                event.method,
                self.policy.auth_retry_seconds,
            )
        else:
            log.debug("camera %s: still refused: %s", camera.id, why)

    async def _teardown(self, state: _SessionState) -> None:
        """Best effort TEARDOWN: said, briefly waited for, never blocking shutdown."""
        client = state.client
        if not client.send_teardown():
            return
        try:
            state.writer.write(client.data_to_send())
            async with asyncio.timeout(TEARDOWN_WAIT_SECONDS):
                await state.writer.drain()
                while True:
                    if state.read_task is None:
                        state.read_task = asyncio.ensure_future(state.reader.read(READ_SIZE))
                    data = await state.read_task
                    state.read_task = None
                    if not data:
                        return
                    client.receive_data(data)
                    while (event := client.next_event()) is not NEED_DATA:
                        if isinstance(event, TeardownComplete) or event is Signal.CLOSED:
                            log.info("camera %s: session torn down", self.camera.id)
                            return
        except (OSError, TimeoutError, CameraProtocolError):
            pass

    # -- documents and reads --------------------------------------------------------------

    async def _on_packet(self, state: _SessionState, packet: bytes) -> None:
        state.reassembler.receive_data(packet)
        while (result := state.reassembler.next_event()) is not NO_DOCUMENT_YET:
            if isinstance(result, RtpDocument):
                self._frames.inc()
                state.progress.delivered()
                await self._on_document(result.data)
            elif isinstance(result, RtpDocumentDropped):
                self._parse_errors.report(
                    f"rtp_{result.reason.value}",
                    "metadata document dropped (%s): %s",
                    result.reason.value,
                    result.detail,
                )
            elif isinstance(result, RtpPacketRejected):
                self._parse_errors.report(
                    result.kind, "RTP packet rejected (%s): %s", result.kind, result.detail
                )

    async def _on_document(self, document: bytes) -> None:
        camera = self.camera
        try:
            results = onvif.parse_metadata(document, max_bytes=onvif.MAX_DOCUMENT_BYTES)
        except CameraProtocolError as exc:
            self._parse_errors.report(
                exc.kind, "metadata document refused (%s): %s", exc.kind, exc.detail
            )
            return
        for result in results:
            if isinstance(result, onvif.OnvifSceneFrame):
                await self._scene_finished(self.tracker.observe(result, time.monotonic()))
            elif isinstance(result, onvif.OnvifProblem):
                self._parse_errors.report(
                    result.kind,
                    "notification or scene object not readable (%s): %s",
                    result.kind,
                    result.detail,
                )
            elif result.initialized:
                # State re-announced at stream start: not a new read.
                log.debug("camera %s: skipped Initialized %s", camera.id, result.topic)
            elif isinstance(result, onvif.OnvifPlateRead):
                received = utc_now()
                # The same vehicle in the scene description: this read stands for it.
                match = self.tracker.notification(normalize_plate(result.plate), time.monotonic())
                if match is not None:
                    self.ctx.metrics.scene_reads_merged.labels(camera=camera.id).inc()
                await self._spawn(functools.partial(self._plate_read, result, received, match))
            elif camera.other_events is OtherEvents.FORWARD:
                event = onvif.to_camera_event(result, camera.id, utc_now())
                await self._spawn(functools.partial(self._submit_after, event))

    async def _spawn(
        self, work: Callable[[asyncio.Task[None] | None], Coroutine[Any, Any, None]]
    ) -> None:
        """Start one read's work, chained after the previous read's (camera order)."""
        while len(self.pending) >= MAX_PENDING_READS:
            await asyncio.wait(self.pending, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.create_task(work(self._last_submit))
        self._last_submit = task
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _plate_read(
        self,
        read: onvif.OnvifPlateRead,
        received: datetime,
        match: NotificationMatch | None,
        previous: asyncio.Task[None] | None,
    ) -> None:
        # The picture is fetched at once (the camera keeps only its 10 latest),
        # then the read waits its turn so reads reach the pipeline in camera order.
        picture = await self._fetch_picture(read.picture_path)
        event = onvif.to_plate_event(read, self.camera.id, received, plate_image=picture)
        if match is not None and match.agree:
            event = onvif.merge_scene_into(event, match.reading, self.scene_resolution)
        elif match is not None:
            # The object was read as this plate too, but its best reading differs:
            # the same vehicle, so no second read, but none of its fields either.
            scene = {"object_id": match.object_id, "plate": match.reading.plate}
            event = dataclasses.replace(event, raw={**event.raw, "scene": scene})
        await self._submit_after(event, previous)

    # -- scene description --------------------------------------------------------------

    async def _scene_finished(self, finished: list[FinishedTrack]) -> None:
        """Publish each finished object's best reading (in the order they finished)."""
        metrics, camera = self.ctx.metrics, self.camera
        for track in finished:
            metrics.scene_tracks.labels(camera=camera.id, end=track.end.value).inc()
            if track.merged:
                if not track.claimed:  # a claim was counted when its notification came
                    metrics.scene_reads_merged.labels(camera=camera.id).inc()
                log.debug(
                    "camera %s: scene object %s is the vehicle of a plate notification",
                    camera.id,
                    track.object_id,
                )
                continue
            if track.end is TrackEnd.EVICTED:
                self._complaints.warning(
                    (camera.id, "scene_evicted"),
                    "camera %s: more than %d scene objects at once; the oldest published early",
                    camera.id,
                    camera.track_max_objects,
                )
            received = utc_now()
            await self._spawn(functools.partial(self._scene_read, track, received))

    async def _scene_read(
        self, track: FinishedTrack, received: datetime, previous: asyncio.Task[None] | None
    ) -> None:
        reading = track.best
        plate_image = reading.image
        if plate_image is not None and plate_image.data is None:
            self._parse_errors.report(
                "scene_bad_image",
                "scene object %s: %s",
                track.object_id,
                plate_image.missing_reason,
            )
            if reading.image_ref is not None:
                plate_image = await self._fetch_reference(reading.image_ref)
        elif plate_image is None and reading.image_ref is not None:
            plate_image = await self._fetch_reference(reading.image_ref)
        scene_image = reading.scene_image
        if scene_image is None and reading.scene_image_ref is not None:
            scene_image = await self._fetch_reference(reading.scene_image_ref)
        event = onvif.scene_to_plate_event(
            reading,
            self.camera.id,
            received,
            plate_image=plate_image,
            scene_image=scene_image,
            resolution=self.scene_resolution,
            readings=track.readings,
        )
        event = dataclasses.replace(event, raw={**event.raw, "track_end": track.end.value})
        await self._submit_after(event, previous)

    async def _fetch_reference(self, reference: str) -> Image:
        """The picture an `ImageRef` names: fetched like a notification's picture,
        from the camera's own host only (never a host the camera's data names)."""
        camera, failures = self.camera, self.ctx.metrics.image_fetch_failures
        try:
            url = yarl.URL(reference)
        except ValueError:
            failures.labels(camera=camera.id, reason="bad_path").inc()
            return Image.missing(f"unusable image reference {reference[:100]!r}")
        if not url.is_absolute():
            return await self._fetch_picture(reference)
        if url.scheme not in ("http", "https"):
            failures.labels(camera=camera.id, reason="bad_path").inc()
            return Image.missing(f"image reference is not http(s): {reference[:100]!r}")
        if (url.host or "").lower() != self.host.lower():
            failures.labels(camera=camera.id, reason="foreign_host").inc()
            self._complaints.warning(
                (camera.id, "picture_foreign_host"),
                "camera %s: image reference on host %r, not the camera's: not fetched",
                camera.id,
                (url.host or "")[:100],
            )
            return Image.missing(
                f"image reference names host {(url.host or '')[:100]!r}, not the camera's "
                f"({self.host}): not fetched"
            )
        return await self._fetch_url(url, url.path)

    async def _submit_after(self, event: AnyEvent, previous: asyncio.Task[None] | None) -> None:
        """Submit `event` once the previous read's work is done (camera order)."""
        if previous is not None and not previous.done():
            await asyncio.wait([previous])  # never raises, even if it was cancelled
        admission = await self.ctx.submit(event)
        if not admission.taken:
            self._complaints.warning(
                (self.camera.id, "not_taken"),
                "camera %s: read %s not taken by the pipeline (%s); the stream cannot resend it",
                self.camera.id,
                event.id,
                admission.value,
            )
        elif admission is Admission.DUPLICATE:
            log.debug("camera %s: duplicate read %s", self.camera.id, event.id)

    # -- picture fetch -------------------------------------------------------------------

    async def _fetch_picture(self, path: str | None) -> Image:
        """The picture, or a missing Image that says why."""
        camera = self.camera
        if not path:
            return Image.missing("the notification names no picture")
        if not path.startswith("/"):
            path = "/" + path
        try:
            url = yarl.URL(self.picture_base + path)
        except ValueError:
            self.ctx.metrics.image_fetch_failures.labels(camera=camera.id, reason="bad_path").inc()
            return Image.missing(f"unusable picture path {path[:100]!r}")
        return await self._fetch_url(url, path)

    async def _fetch_url(self, url: yarl.URL, path: str) -> Image:
        """GET a picture on the camera's host (with its credentials), or why not."""
        camera = self.camera
        data, failure, reason = await self._fetch_with_retries(url, path)
        if data is not None:
            return Image(data=data)
        self.ctx.metrics.image_fetch_failures.labels(camera=camera.id, reason=failure).inc()
        self._complaints.warning(
            (camera.id, f"picture_{failure}"),
            "camera %s: picture %s missing: %s",
            camera.id,
            path[:200],
            reason,
        )
        return Image.missing(f"picture fetch failed: {reason}")

    async def _fetch_with_retries(self, url: yarl.URL, path: str) -> tuple[bytes | None, str, str]:
        """GET the picture, once more after a timeout, connection error or 5xx."""
        camera = self.camera
        failure, reason = "unknown", "not fetched"
        async with self.fetch_limit:
            for attempt in range(IMAGE_FETCH_ATTEMPTS):
                try:
                    async with asyncio.timeout(camera.image_timeout_seconds):
                        data, failure, reason = await self._get_picture(url)
                except TimeoutError:
                    data = None
                    failure = "timeout"
                    reason = f"no answer within {camera.image_timeout_seconds:g} s"
                except aiohttp.ClientError as exc:
                    data = None
                    failure = "connection"
                    reason = f"connection error: {type(exc).__name__}"
                if data is not None:
                    return data, "", ""
                if failure not in ("timeout", "connection", "http_5xx"):
                    break  # a 404 or a non-JPEG will not change on retry
                log.debug(
                    "camera %s: picture %s attempt %d failed: %s",
                    camera.id,
                    path,
                    attempt + 1,
                    reason,
                )
        return None, failure, reason

    async def _get_picture(self, url: yarl.URL) -> tuple[bytes | None, str, str]:
        """One GET (with at most a few auth rounds): (data, failure label, reason)."""
        # The Digest uri must be the request-target exactly as sent.
        target = url.raw_path_qs
        for _ in range(3):
            authorization = self.picture_auth.authorization("GET", target)
            headers = {"Authorization": authorization} if authorization else {}
            async with self.http.get(url, headers=headers, allow_redirects=False) as response:
                if response.status == 401:
                    verdict = self.picture_auth.on_unauthorized(
                        response.headers.getall("WWW-Authenticate", []), authorization
                    )
                    if verdict is AuthVerdict.RETRY:
                        continue
                    self.ctx.metrics.camera_auth_failures.labels(camera=self.camera.id).inc()
                    return None, "auth", f"HTTP 401 ({verdict.value})"
                if response.status != 200:
                    return None, _status_label(response.status), f"HTTP {response.status}"
                self.picture_auth.on_success()
                if (response.content_length or 0) > MAX_PICTURE_BYTES:
                    return None, "too_large", f"{response.content_length} bytes"
                body = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > MAX_PICTURE_BYTES:
                        return None, "too_large", f"over {MAX_PICTURE_BYTES} bytes"
                if not body.startswith(JPEG_MAGIC):
                    return None, "not_jpeg", "the answer is not a JPEG"
                return bytes(body), "", ""
        return None, "auth", "HTTP 401 after answering the challenge"


def _status_label(status: int) -> str:
    # A bounded set of metric labels, whatever the camera answers.
    if status >= 500:
        return "http_5xx"
    if status in (403, 404, 410):
        return f"http_{status}"
    return "http_status"


@dataclass(slots=True)
class _SessionState:
    client: RtspClient
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    progress: SessionProgress
    read_task: asyncio.Future[bytes] | None = None
    playing: bool = False
    reassembler: RtpReassembler = field(default_factory=RtpReassembler)
    # time.monotonic() deadlines
    handshake_deadline: float = 0.0
    idle_deadline: float = 0.0
    keepalive_at: float = float("inf")
    keepalive_every: float = float("inf")
