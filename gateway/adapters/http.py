"""HTTP push receiver: the server that cameras in HTTP mode call (spec section 2).

A thin aiohttp shell around `gateway.codecs.http_body`: one URL path per camera,
POST with a JSON body or GET with `Caption`/`description`. A camera gets its 200
only once `ctx.submit` says the event is durably in the outbox.

Probing: a request on a path that is no camera's gets exactly the reply of a
wrong password on a real camera's path (401, same challenge, same body, a
comparison of the same cost), so credentials cannot be used to find camera
paths, nor paths to find cameras. 404 is only given when no camera on the
server has credentials (then there is nothing to guess). Source addresses are
checked after the credentials, so a 403 never tells a stranger a path exists.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import json
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.adapters.base import AdapterContext
from gateway.codecs.http_body import (
    BodyOptions,
    HttpBody,
    HttpCameraNotice,
    parse_json_body,
    parse_query,
    to_event,
)
from gateway.config import HttpCameraConfig, OtherEvents
from gateway.errors import CameraProtocolError
from gateway.event import utc_now

log = logging.getLogger(__name__)

SOURCE = "http"
REALM = "lpr-gateway"
# Bodies above this are parsed in a worker thread so the loop keeps serving.
PARSE_IN_THREAD_BYTES = 1_000_000
# After a 413, discard what the client still sends for at most this long, so
# that it can read the reply before the connection closes.
LINGER_SECONDS = 2.0
RETRY_AFTER_SECONDS = 5
# All request bodies being read or parsed at once, across cameras: beyond it a
# request is answered 503 (the camera retries) rather than growing memory.
MAX_BUFFERED_BYTES = 256 * 1024 * 1024
# At shutdown, requests still running get this long (the gateway waits ~2 s for
# adapters); a camera cut off without a 200 sends its read again.
SHUTDOWN_SECONDS = 1.0
_READ_CHUNK = 256 * 1024


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False


_UNAUTHORIZED = _Reply(
    401,
    {"error": "unauthorized"},
    (("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"'),),
)
_NOT_FOUND = _Reply(404, {"error": "not found"})
_FORBIDDEN = _Reply(403, {"error": "source address not allowed"})
_UNAVAILABLE_PARTS = (
    503,
    {"error": "unavailable, retry later"},
    (("Retry-After", str(RETRY_AFTER_SECONDS)),),
)
_UNAVAILABLE = _Reply(*_UNAVAILABLE_PARTS)
# A fixed dummy secret compared when the path is unknown, so both cases cost the same.
_DUMMY_SECRET = b"\x00" * 32


@dataclass(frozen=True, slots=True)
class _Camera:
    config: HttpCameraConfig
    options: BodyOptions
    user: bytes | None  # None: no credentials required
    password: bytes
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def _path_key(path: str) -> str:
    return path.rstrip("/") or "/"


class HttpPushServer:
    """The listening server for every HTTP camera; `start()` then `stop()`."""

    def __init__(self, ctx: AdapterContext, cameras: Sequence[HttpCameraConfig]) -> None:
        self.ctx = ctx
        self.metrics = ctx.metrics
        self.settings = ctx.config.http
        self._cameras: dict[str, _Camera] = {}
        for camera in cameras:
            self._cameras[_path_key(camera.path)] = _Camera(
                config=camera,
                options=BodyOptions(tz=camera.tz, swap_direction=camera.swap_direction),
                user=None
                if camera.username is None and camera.password is None
                else (camera.username or "").encode("utf-8"),
                password=(camera.password or "").encode("utf-8"),
                networks=tuple(
                    ipaddress.ip_network(source, strict=False) for source in camera.allowed_sources
                ),
            )
            self.metrics.camera_known(camera.id, SOURCE)
        self._any_auth = any(c.user is not None for c in self._cameras.values())
        self._runner: web.ServerRunner | None = None
        self.port: int | None = None
        self._buffered = 0  # body bytes held by requests being read or parsed

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        server = web.Server(self._handle, lingering_time=LINGER_SECONDS, access_log=None)
        runner = web.ServerRunner(server, shutdown_timeout=SHUTDOWN_SECONDS)
        await runner.setup()
        tls = self._tls_context()
        site = web.TCPSite(
            runner, self.settings.host, self.settings.port, ssl_context=tls, reuse_address=True
        )
        await site.start()
        self._runner = runner
        addresses = runner.addresses
        self.port = int(addresses[0][1]) if addresses else self.settings.port
        log.info(
            "HTTP push receiver on %s://%s:%s for %d camera(s)",
            "https" if tls else "http",
            self.settings.host,
            self.port,
            len(self._cameras),
        )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _tls_context(self) -> ssl.SSLContext | None:
        if self.settings.tls_cert_file is None or self.settings.tls_key_file is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.settings.tls_cert_file, self.settings.tls_key_file)
        return context

    # -- one request -------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            reply = await self._reply(request)
        except Exception:  # a bug, never bad input: say so loudly, keep serving
            log.exception("HTTP request %s %s failed", request.method, request.path)
            reply = _Reply(500, {"error": "internal error"}, close=True)
        self.metrics.http_requests.labels(status=str(reply.status)).inc()
        response = web.Response(
            status=reply.status,
            body=json.dumps(reply.body).encode(),
            content_type="application/json",
            headers=dict(reply.headers),
        )
        if reply.close:
            response.force_close()
        return response

    async def _reply(self, request: web.BaseRequest) -> _Reply:
        if self.ctx.stopping.is_set():
            return _UNAVAILABLE
        camera = self._cameras.get(_path_key(request.path))
        if not self._authorized(camera, request.headers.get("Authorization")):
            if camera is None:
                if not self._any_auth:
                    log.info("request for unknown path %r from %s", request.path, request.remote)
                    return _NOT_FOUND
                log.info(
                    "refused request for unknown path %r from %s", request.path, request.remote
                )
            else:
                cid = camera.config.id
                self.metrics.camera_auth_failures.labels(camera=cid).inc()
                log.warning("camera %s: missing or wrong credentials from %s", cid, request.remote)
            return _UNAUTHORIZED
        assert camera is not None
        cid = camera.config.id
        if camera.networks and not _source_allowed(request.remote, camera.networks):
            log.warning(
                "camera %s: refused request from %s (not in allowed_sources)", cid, request.remote
            )
            return _FORBIDDEN
        if request.method == "GET":
            parsed = self._parse_query(request, camera)
            size = 0
        elif request.method == "POST":
            reserved = [0]
            try:
                body = await self._read_body(request, cid, reserved)
                if isinstance(body, _Reply):
                    return body
                size = len(body)
                parsed = await self._parse(body, camera)
                del body
            finally:
                self._buffered -= reserved[0]
        else:
            return _Reply(405, {"error": "method not allowed"}, (("Allow", "GET, POST"),))
        if isinstance(parsed, _Reply):
            return parsed
        return await self._submit(parsed, camera, size)

    def _authorized(self, camera: _Camera | None, header: str | None) -> bool:
        if camera is not None and camera.user is None:
            return True
        user, password = _basic_credentials(header)
        expected_user = (
            camera.user if camera is not None and camera.user is not None else _DUMMY_SECRET
        )
        expected_password = camera.password if camera is not None else _DUMMY_SECRET
        # Both comparisons always run (no short circuit) so timing says nothing.
        user_ok = hmac.compare_digest(user, expected_user)
        password_ok = hmac.compare_digest(password, expected_password)
        return camera is not None and header is not None and user_ok & password_ok

    async def _read_body(
        self, request: web.BaseRequest, cid: str, reserved: list[int]
    ) -> bytes | _Reply:
        """The whole body, within the per-request limit and the server-wide budget.

        `reserved[0]` is what this request holds of `MAX_BUFFERED_BYTES`; the
        caller releases it once the body is parsed.
        """
        limit = self.settings.max_body_bytes
        declared = request.content_length
        if declared is not None and declared > limit:
            log.warning("camera %s: body of %d bytes refused (limit %d)", cid, declared, limit)
            self.metrics.parse_errors.labels(source=SOURCE, kind="too_large").inc()
            return _Reply(413, {"error": f"body larger than {limit} bytes"}, close=True)
        chunks: list[bytes] = []
        total = 0
        try:
            async with asyncio.timeout(self.settings.request_timeout_seconds):
                while chunk := await request.content.readany():
                    total += len(chunk)
                    if total > limit:
                        log.warning(
                            "camera %s: body over %d bytes refused while streaming", cid, limit
                        )
                        self.metrics.parse_errors.labels(source=SOURCE, kind="too_large").inc()
                        return _Reply(413, {"error": f"body larger than {limit} bytes"}, close=True)
                    if self._buffered + len(chunk) > MAX_BUFFERED_BYTES:
                        log.warning(
                            "camera %s: %d bytes of bodies already buffered; answered 503",
                            cid,
                            self._buffered,
                        )
                        self.metrics.parse_errors.labels(source=SOURCE, kind="server_busy").inc()
                        return _Reply(*_UNAVAILABLE_PARTS, close=True)
                    self._buffered += len(chunk)
                    reserved[0] += len(chunk)
                    chunks.append(chunk)
        except TimeoutError:
            log.warning(
                "camera %s: body not received within %ss",
                cid,
                self.settings.request_timeout_seconds,
            )
            self.metrics.parse_errors.labels(source=SOURCE, kind="timeout").inc()
            return _Reply(408, {"error": "request body timed out"}, close=True)
        except (ConnectionError, HttpProcessingError) as exc:
            log.warning("camera %s: request body broken off: %s", cid, exc)
            self.metrics.parse_errors.labels(source=SOURCE, kind="incomplete_body").inc()
            return _Reply(400, {"error": "incomplete body"}, close=True)
        self.metrics.camera_bytes.labels(camera=cid).inc(total)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _parse(self, body: bytes, camera: _Camera) -> HttpBody | _Reply:
        try:
            if len(body) > PARSE_IN_THREAD_BYTES:
                return await asyncio.to_thread(parse_json_body, body, camera.options)
            return parse_json_body(body, camera.options)
        except CameraProtocolError as exc:
            log.warning(
                "camera %s: unreadable body (%d bytes): %s", camera.config.id, len(body), exc
            )
            self.metrics.parse_errors.labels(source=SOURCE, kind=exc.kind).inc()
            return _Reply(400, {"error": exc.kind, "detail": exc.detail})

    def _parse_query(self, request: web.BaseRequest, camera: _Camera) -> HttpBody | _Reply:
        try:
            return parse_query(request.query.items(), camera.options)
        except CameraProtocolError as exc:
            log.warning("camera %s: unreadable query: %s", camera.config.id, exc)
            self.metrics.parse_errors.labels(source=SOURCE, kind=exc.kind).inc()
            return _Reply(400, {"error": exc.kind, "detail": exc.detail})

    async def _submit(self, parsed: HttpBody, camera: _Camera, size: int) -> _Reply:
        cid = camera.config.id
        self.metrics.camera_frames.labels(camera=cid).inc()
        for problem in parsed.problems:
            log.warning(
                "camera %s: field %r unusable (%s): %s",
                cid,
                problem.field,
                problem.kind,
                problem.detail,
            )
            self.metrics.parse_errors.labels(source=SOURCE, kind=problem.kind).inc()
        event = to_event(parsed, cid, utc_now())
        if isinstance(parsed, HttpCameraNotice) and camera.config.other_events is OtherEvents.SKIP:
            # Counted here: the pipeline (which counts every submitted event) never sees it.
            self.metrics.events_received.labels(camera=cid, source=SOURCE).inc()
            log.debug("camera %s: %s event skipped (other_events: skip)", cid, parsed.kind)
            return _Reply(200, {"status": "skipped", "id": event.id})
        if self.ctx.stopping.is_set():
            return _UNAVAILABLE
        # Shielded: a timed-out request still lets the pipeline finish its write;
        # the camera's retry is then a duplicate, which the pipeline absorbs.
        pending = asyncio.ensure_future(self.ctx.submit(event))
        try:
            admission = await asyncio.wait_for(
                asyncio.shield(pending), self.settings.request_timeout_seconds
            )
        except TimeoutError:
            log.warning("camera %s: event %s not accepted in time; answered 503", cid, event.id)
            return _UNAVAILABLE
        if admission.taken:
            log.debug(
                "camera %s: %s event %s (%d bytes) %s",
                cid,
                "plate" if not isinstance(parsed, HttpCameraNotice) else parsed.kind,
                event.id,
                size,
                admission.value,
            )
            return _Reply(200, {"status": admission.value, "id": event.id})
        log.warning(
            "camera %s: event %s refused (%s); answered 503", cid, event.id, admission.value
        )
        return _UNAVAILABLE


def _basic_credentials(header: str | None) -> tuple[bytes, bytes]:
    """(user, password) from an `Authorization: Basic` header; empty when absent or bad."""
    if header is None:
        return b"", b""
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic" or len(encoded) > 4096:
        return b"", b""
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return b"", b""
    user, _, password = decoded.partition(b":")
    return user, password


def _source_allowed(
    remote: str | None,
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
) -> bool:
    if remote is None:
        return False
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


async def run(ctx: AdapterContext, cameras: Sequence[HttpCameraConfig]) -> None:
    """Serve every HTTP camera until cancelled."""
    server = HttpPushServer(ctx, cameras)
    await server.start()
    # No session exists in push mode: a camera is "online" while we listen for it.
    for camera in cameras:
        ctx.set_camera_online(camera.id, True)
    try:
        await asyncio.Event().wait()
    finally:
        for camera in cameras:
            ctx.set_camera_online(camera.id, False)
        await server.stop()
