"""HTTP push receiver: the server that cameras in HTTP mode call.

A thin aiohttp shell around `gateway.codecs.http_body`: a URL path per camera,
or one path for many cameras that tell themselves apart by `match` (the
`device` field they send, their source address), POST with a JSON body or GET
with `Caption`/`description`. A camera gets its 200 only once `ctx.submit`
says the event is durably in the outbox.

On a shared path, a request no camera there takes gets the reply of a wrong
password, counted in lpr_http_unmatched_requests. The body is read only when
the device decides and the credentials fit at least one camera that could be
the sender, so nobody without a password makes the gateway read bodies.

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
import collections
import enum
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
from aiohttp.web_protocol import RequestHandler

from gateway.adapters.base import AdapterContext
from gateway.codecs.http_body import (
    BodyOptions,
    HttpBody,
    HttpCameraNotice,
    document_device,
    interpret_document,
    interpret_query,
    load_json_body,
    load_query_string,
    parse_json_body,
    parse_query_string,
    to_event,
)
from gateway.config import (
    HttpCameraConfig,
    HttpServerConfig,
    OtherEvents,
    device_key,
    http_path_key,
)
from gateway.errors import CameraProtocolError
from gateway.event import AnyEvent, utc_now
from gateway.log_limit import RateLimitedLog
from gateway.metrics import Metrics
from gateway.pipeline import Admission

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
# aiohttp's own keep-alive timer is only a backstop behind ours (which count
# what they close): it fires this long after ours would have.
_BACKSTOP_SECONDS = 5.0


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
# A camera switched off at runtime (`camera/disable`): it keeps its reads and retries.
_DISABLED = _Reply(503, {"error": "camera disabled"}, (("Retry-After", str(RETRY_AFTER_SECONDS)),))
# A fixed dummy secret compared when the path is unknown, so both cases cost the same.
_DUMMY_SECRET = b"\x00" * 32


_Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


@dataclass(frozen=True, slots=True)
class _Camera:
    config: HttpCameraConfig
    options: BodyOptions
    user: bytes | None  # None: no credentials required
    password: bytes
    networks: _Networks  # allowed_sources
    device: str | None = None  # match.device, as compared (`device_key`)
    sources: _Networks = ()  # match.source

    def source_matches(self, remote: str | None) -> bool:
        return not self.sources or _source_allowed(remote, self.sources)

    def device_matches(self, device: str | None) -> bool:
        return self.device is None or (device is not None and device_key(device) == self.device)


@dataclass(frozen=True, slots=True)
class _Route:
    """The cameras on one URL path: one without `match`, or any number with it."""

    path: str
    cameras: tuple[_Camera, ...]

    @property
    def direct(self) -> _Camera | None:
        """The path's one camera, when the path alone says who it is."""
        if len(self.cameras) == 1 and self.cameras[0].config.match is None:
            return self.cameras[0]
        return None


def _path_key(path: str) -> str:
    return http_path_key(path)


def _networks(sources: Sequence[str]) -> _Networks:
    return tuple(ipaddress.ip_network(source, strict=False) for source in sources)


# -- connections -------------------------------------------------------------

# Sent (then the connection closed) to a connection over a cap, before any of
# its request is read: a camera sees a 503 and retries.
_OVER_CAP_BODY = b'{"error": "too many connections, retry later"}'
_OVER_CAP_REPLY = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    + f"Content-Length: {len(_OVER_CAP_BODY)}\r\n".encode()
    + f"Retry-After: {RETRY_AFTER_SECONDS}\r\n".encode()
    + b"Connection: close\r\n\r\n"
    + _OVER_CAP_BODY
)


class ConnectionLimits:
    """Open connections to the camera port, in total and per source address.

    Without a cap, a flood of half-open connections uses up the process's file
    descriptors and real cameras (and the metrics port) are refused by the OS.
    """

    def __init__(self, settings: HttpServerConfig, metrics: Metrics, complaints: RateLimitedLog):
        self.total_cap = settings.max_connections
        self.source_cap = settings.max_connections_per_source
        self.metrics = metrics
        self.complaints = complaints
        self.open = 0
        self.by_source: collections.Counter[str] = collections.Counter()
        metrics.http_connections_open.set(0)

    def admit(self, source: str) -> bool:
        """Take a slot for a new connection from `source`; False (counted, logged) if over a cap."""
        if self.open >= self.total_cap:
            reason, cap = "max_connections", self.total_cap
        elif self.by_source[source] >= self.source_cap:
            reason, cap = "per_source", self.source_cap
        else:
            self.open += 1
            self.by_source[source] += 1
            self.metrics.http_connections_open.set(self.open)
            return True
        self.metrics.http_connections_closed.labels(reason=reason).inc()
        self.complaints.warning(
            (source, reason),
            "HTTP connection from %s refused: %s open (%s cap %d); answered 503",
            source,
            self.open if reason == "max_connections" else self.by_source[source],
            "total" if reason == "max_connections" else "per source",
            cap,
        )
        return False

    def release(self, source: str) -> None:
        self.open -= 1
        left = self.by_source[source] - 1
        if left > 0:
            self.by_source[source] = left
        else:
            del self.by_source[source]  # the map holds only sources with connections
        self.metrics.http_connections_open.set(self.open)


class _Phase(enum.Enum):
    HEADERS = "headers"  # waiting for a request's headers: header_timeout runs
    REQUEST = "request"  # our handler has the request: request_timeout_seconds applies
    IDLE = "idle"  # keep-alive between requests: keepalive_timeout runs


class CameraConnection(RequestHandler):
    """aiohttp's connection protocol with the camera port's limits.

    A connection over a cap is answered 503 and closed before anything is read.
    A request's headers must be complete within `header_timeout_seconds` of
    the connection opening or of the first byte after a keep-alive pause
    (slowloris); a keep-alive connection idle for `keepalive_timeout_seconds`
    is closed. Each closing is counted in lpr_http_connections_closed.
    """

    def __init__(
        self,
        manager: web.Server,
        *,
        limits: ConnectionLimits,
        settings: HttpServerConfig,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._header_timeout = settings.header_timeout_seconds
        self._idle_timeout = settings.keepalive_timeout_seconds
        self._source = ""
        self._admitted = False
        self._phase = _Phase.HEADERS
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._source = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        if not self._limits.admit(self._source):
            # aiohttp never sees this connection: no task, no parser state.
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(_OVER_CAP_REPLY)
            transport.close()
            return
        self._admitted = True
        super().connection_made(transport)
        self._enter(_Phase.HEADERS)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_deadline()
        if self._admitted:
            self._admitted = False
            self._limits.release(self._source)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        if self._phase is _Phase.IDLE:
            self._enter(_Phase.HEADERS)  # the next request's first byte
        super().data_received(data)

    def request_started(self) -> None:
        """The headers are in and the handler has the request: no header deadline."""
        self._enter(_Phase.REQUEST)

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        result = await super().finish_response(request, resp, start_time)
        if self._admitted and self.transport is not None:
            self._enter(_Phase.IDLE)
        return result

    def _enter(self, phase: _Phase) -> None:
        self._cancel_deadline()
        self._phase = phase
        if phase is _Phase.HEADERS:
            self._deadline = self._loop.call_later(self._header_timeout, self._expire)
        elif phase is _Phase.IDLE:
            self._deadline = self._loop.call_later(self._idle_timeout, self._expire)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self.transport is None or self._phase is _Phase.REQUEST:
            return
        if self._phase is _Phase.HEADERS:
            reason = "header_timeout"
            self._limits.complaints.info(
                (self._source, reason),
                "HTTP connection from %s closed: request headers not complete within %gs",
                self._source,
                self._header_timeout,
            )
        else:
            reason = "idle_timeout"
            log.debug(
                "HTTP connection from %s closed: idle for %gs", self._source, self._idle_timeout
            )
        self._limits.metrics.http_connections_closed.labels(reason=reason).inc()
        self.force_close()


class _CameraServer(web.Server):
    """web.Server whose connections are `CameraConnection`s."""

    def __init__(
        self, *args: Any, limits: ConnectionLimits, settings: HttpServerConfig, **kwargs: Any
    ):
        super().__init__(*args, **kwargs)
        self._limits = limits
        self._settings = settings

    def __call__(self) -> RequestHandler:
        return CameraConnection(
            self,
            loop=self._loop,
            limits=self._limits,
            settings=self._settings,
            **self._kwargs,
        )


class HttpPushServer:
    """The listening server for every HTTP camera; `start()` then `stop()`."""

    def __init__(self, ctx: AdapterContext, cameras: Sequence[HttpCameraConfig]) -> None:
        self.ctx = ctx
        self.metrics = ctx.metrics
        self.settings = ctx.config.http
        by_path: dict[str, list[_Camera]] = {}
        for camera in cameras:
            match = camera.match
            by_path.setdefault(_path_key(camera.path), []).append(
                _Camera(
                    config=camera,
                    options=BodyOptions(tz=camera.tz, swap_direction=camera.swap_direction),
                    user=None
                    if camera.username is None and camera.password is None
                    else (camera.username or "").encode("utf-8"),
                    password=(camera.password or "").encode("utf-8"),
                    networks=_networks(camera.allowed_sources),
                    device=match.device_key if match is not None else None,
                    sources=_networks(match.source) if match is not None else (),
                )
            )
            self.metrics.camera_known(camera.id, SOURCE)
        self._routes = {path: _Route(path, tuple(group)) for path, group in by_path.items()}
        self._cameras = [camera for route in self._routes.values() for camera in route.cameras]
        for route in self._routes.values():
            if route.direct is None:
                self.metrics.http_unmatched.labels(path=route.path)
        self._any_auth = any(c.user is not None for c in self._cameras)
        # Complaints a camera (or anyone who can reach the port) can repeat at
        # will: one line per (camera or source, kind) per interval; metrics count all.
        self._complaints = RateLimitedLog(log, on_suppressed=self.metrics.log_lines_suppressed.inc)
        self.limits = ConnectionLimits(self.settings, self.metrics, self._complaints)
        self._runner: web.ServerRunner | None = None
        self.port: int | None = None
        self._buffered = 0  # body bytes held by requests being read or parsed

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        settings = self.settings
        server = _CameraServer(
            self._handle,
            limits=self.limits,
            settings=settings,
            lingering_time=LINGER_SECONDS,
            access_log=None,
            keepalive_timeout=max(
                settings.keepalive_timeout_seconds, settings.header_timeout_seconds
            )
            + _BACKSTOP_SECONDS,
        )
        runner = web.ServerRunner(server, shutdown_timeout=SHUTDOWN_SECONDS)
        await runner.setup()
        try:
            tls = self._tls_context()
            site = web.TCPSite(
                runner, self.settings.host, self.settings.port, ssl_context=tls, reuse_address=True
            )
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
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

    @property
    def listening(self) -> bool:
        return self._runner is not None

    @property
    def camera_ids(self) -> list[str]:
        return [camera.config.id for camera in self._cameras]

    def _tls_context(self) -> ssl.SSLContext | None:
        if self.settings.tls_cert_file is None or self.settings.tls_key_file is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.settings.tls_cert_file, self.settings.tls_key_file)
        return context

    # -- one request -------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        connection = request.protocol
        if isinstance(connection, CameraConnection):
            connection.request_started()
        try:
            reply = await self._reply(request)
        except Exception:  # a bug, never bad input: say so loudly, keep serving
            log.exception("HTTP request %s %s failed", request.method, request.path)
            reply = _Reply(500, {"error": "internal error"}, close=True)
        self.metrics.child(self.metrics.http_requests, str(reply.status)).inc()
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
        route = self._routes.get(_path_key(request.path))
        if route is not None and route.direct is None:
            return await self._reply_matched(request, route)
        camera = route.direct if route is not None else None
        refusal = self._refusal(camera, request, request.headers.get("Authorization"))
        if refusal is not None:
            return refusal
        assert camera is not None  # a request for no camera is refused as unauthorized
        if request.method not in ("GET", "POST"):
            return _Reply(405, {"error": "method not allowed"}, (("Allow", "GET, POST"),))
        return await self._take(request, camera)

    def _refusal(
        self, camera: _Camera | None, request: web.BaseRequest, header: str | None
    ) -> _Reply | None:
        """Why this request may not be `camera`'s read (its login, its source, its
        switch, in that order), or None."""
        if not self._authorized(camera, header):
            return self._unauthorized(camera, request)
        assert camera is not None  # _authorized is False without a camera
        if not self._source_allowed(camera, request):
            return _FORBIDDEN
        if self.ctx.switches.is_disabled(camera.config.id):
            # Only after the login: who may not post learns nothing of the switch.
            return _DISABLED
        return None

    async def _take(self, request: web.BaseRequest, camera: _Camera) -> _Reply:
        """Parse the camera's GET or POST and hand the read on."""
        if request.method == "GET":
            parsed, size = self._parse_query(request, camera), 0
        else:
            parsed, size = await self._read_and_parse(request, camera)
        if isinstance(parsed, _Reply):
            return parsed
        return await self._submit(parsed, camera, size)

    def _source_allowed(self, camera: _Camera, request: web.BaseRequest) -> bool:
        if not camera.networks or _source_allowed(request.remote, camera.networks):
            return True
        self._complaints.warning(
            (camera.config.id, "source_not_allowed"),
            "camera %s: refused request from %s (not in allowed_sources)",
            camera.config.id,
            request.remote,
        )
        return False

    async def _reply_matched(self, request: web.BaseRequest, route: _Route) -> _Reply:
        """A request on a path whose cameras tell themselves apart by `match`."""
        header = request.headers.get("Authorization")
        candidates = [c for c in route.cameras if c.source_matches(request.remote)]
        # Every candidate's credentials are compared (no short circuit), and none
        # fitting looks exactly like a wrong password on a camera's own path.
        fits = [self._authorized(c, header) for c in candidates] or [self._authorized(None, header)]
        if not any(fits):
            return self._unmatched(route, request, "no camera there has these credentials")
        if request.method not in ("GET", "POST"):
            return _Reply(405, {"error": "method not allowed"}, (("Allow", "GET, POST"),))
        if all(c.device is None for c in candidates):
            # The source decides; the config check leaves at most one candidate.
            return await self._reply_for(request, candidates[0], header)
        reserved = [0]
        try:
            document, size = await self._load_document(request, route, reserved)
            if isinstance(document, _Reply):
                return document
            device = document_device(document)
            matching = [c for c in candidates if c.device_matches(device)]
            if not matching:
                return self._unmatched(route, request, f"device {device!r} is no camera's there")
            camera = matching[0]
            refusal = self._refusal(camera, request, header)
            if refusal is not None:
                return refusal
            self.metrics.child(self.metrics.camera_bytes, camera.config.id).inc(size)
            parsed = await self._interpret(document, camera, size, get=request.method == "GET")
            if isinstance(parsed, _Reply):
                return parsed
            return await self._submit(parsed, camera, size)
        finally:
            self._buffered -= reserved[0]

    async def _reply_for(
        self, request: web.BaseRequest, camera: _Camera, header: str | None
    ) -> _Reply:
        """The request, once it is known to be `camera`'s: as on the camera's own path."""
        refusal = self._refusal(camera, request, header)
        if refusal is not None:
            return refusal
        return await self._take(request, camera)

    async def _load_document(
        self, request: web.BaseRequest, route: _Route, reserved: list[int]
    ) -> tuple[dict[str, Any] | _Reply, int]:
        """The query's or body's fields, before it is known whose they are.

        The body stays reserved in the server-wide budget (`reserved`, released
        by the caller): the document's images are still in it.
        """
        where = f"path {route.path}"
        try:
            if request.method == "GET":
                return load_query_string(request.rel_url.raw_query_string), 0
            body = await self._read_body(request, where, reserved, count=False)
            if isinstance(body, _Reply):
                return body, 0
            if len(body) > PARSE_IN_THREAD_BYTES:
                return await asyncio.to_thread(load_json_body, body), len(body)
            return load_json_body(body), len(body)
        except CameraProtocolError as exc:
            return self._unreadable(where, exc, "request"), 0

    async def _interpret(
        self, document: dict[str, Any], camera: _Camera, size: int, *, get: bool
    ) -> HttpBody | _Reply:
        try:
            if get:
                return interpret_query(document, camera.options)
            if size > PARSE_IN_THREAD_BYTES:  # the images are decoded here
                return await asyncio.to_thread(interpret_document, document, camera.options)
            return interpret_document(document, camera.options)
        except CameraProtocolError as exc:
            return self._unreadable(f"camera {camera.config.id}", exc, "body")

    def _unreadable(self, who: str, exc: CameraProtocolError, what: str) -> _Reply:
        self._complaints.warning((who, exc.kind), "%s: unreadable %s: %s", who, what, exc)
        self.metrics.parse_errors.labels(source=SOURCE, kind=exc.kind).inc()
        return _Reply(400, {"error": exc.kind, "detail": exc.detail})

    def _unmatched(self, route: _Route, request: web.BaseRequest, why: str) -> _Reply:
        """No camera on a shared path takes the request: a wrong password's reply, counted."""
        self.metrics.http_unmatched.labels(path=route.path).inc()
        self._complaints.info(
            (request.remote, "unmatched"),
            "request on %s from %s refused: %s",
            route.path,
            request.remote,
            why[:200],
        )
        return _UNAUTHORIZED if self._any_auth else _NOT_FOUND

    def _unauthorized(self, camera: _Camera | None, request: web.BaseRequest) -> _Reply:
        """Say (rate-limited) who was refused; 404 only when there is nothing to guess."""
        if camera is not None:
            cid = camera.config.id
            self.metrics.camera_auth_failures.labels(camera=cid).inc()
            self._complaints.warning(
                (cid, "auth"),
                "camera %s: missing or wrong credentials from %s",
                cid,
                request.remote,
            )
            if request.headers.get("Authorization"):
                # Wrong credentials, not the first request of a challenge.
                self.ctx.login_refused(cid, f"wrong credentials from {request.remote}")
            return _UNAUTHORIZED
        if self._any_auth:
            message = "refused request for unknown path %r from %s"
        else:
            message = "request for unknown path %r from %s"
        key = (request.remote, "unknown_path")
        self._complaints.info(key, message, request.path[:200], request.remote)
        return _UNAUTHORIZED if self._any_auth else _NOT_FOUND

    async def _read_and_parse(
        self, request: web.BaseRequest, camera: _Camera
    ) -> tuple[HttpBody | _Reply, int]:
        """The POST body parsed, and its size; its share of the buffer budget released."""
        reserved = [0]
        try:
            body = await self._read_body(request, camera.config.id, reserved)
            if isinstance(body, _Reply):
                return body, 0
            return await self._parse(body, camera), len(body)
        finally:
            self._buffered -= reserved[0]

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
        self, request: web.BaseRequest, cid: str, reserved: list[int], *, count: bool = True
    ) -> bytes | _Reply:
        """The whole body, within the per-request limit and the server-wide budget.

        `reserved[0]` is what this request holds of `MAX_BUFFERED_BYTES`; the
        caller releases it once the body is parsed. `count`: `cid` is a camera
        id (not yet known on a shared path: the caller counts the bytes then).
        """
        limit = self.settings.max_body_bytes
        declared = request.content_length
        if declared is not None and declared > limit:
            return self._body_refused(
                cid,
                "too_large",
                _too_large(limit),
                "camera %s: body of %d bytes refused (limit %d)",
                declared,
                limit,
            )
        timeout = self.settings.request_timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                chunks = await self._read_chunks(request, cid, limit, reserved)
        except TimeoutError:
            reply = _Reply(408, {"error": "request body timed out"}, close=True)
            message = "camera %s: body not received within %ss"
            return self._body_refused(cid, "timeout", reply, message, timeout)
        except (ConnectionError, HttpProcessingError) as exc:
            reply = _Reply(400, {"error": "incomplete body"}, close=True)
            message = "camera %s: request body broken off: %s"
            return self._body_refused(cid, "incomplete_body", reply, message, exc)
        if isinstance(chunks, _Reply):
            return chunks
        if count:
            self.metrics.child(self.metrics.camera_bytes, cid).inc(sum(map(len, chunks)))
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _read_chunks(
        self, request: web.BaseRequest, cid: str, limit: int, reserved: list[int]
    ) -> list[bytes] | _Reply:
        """The body's chunks as they come, each reserved in the server-wide budget."""
        chunks: list[bytes] = []
        total = 0
        content = request.content
        # readchunk, not readany: readany joins everything buffered into a new
        # bytes (a copy of most of a 438 KB body under load); the caller joins
        # the chunks once.
        while True:
            chunk, chunk_ended = await content.readchunk()
            if not chunk:
                # (b"", True) ends one chunk of a chunked body: more may follow.
                # But aiohttp's one shared reader of body-less requests answers
                # (b"", True) for ever once it was read: at_eof() tells them apart
                # (looping on it spun the event loop, and the whole gateway).
                if chunk_ended and not content.at_eof():
                    continue
                break
            total += len(chunk)
            if total > limit:
                message = "camera %s: body over %d bytes refused while streaming"
                return self._body_refused(cid, "too_large", _too_large(limit), message, limit)
            if self._buffered + len(chunk) > MAX_BUFFERED_BYTES:
                reply = _Reply(*_UNAVAILABLE_PARTS, close=True)
                message = "camera %s: %d bytes of bodies already buffered; answered 503"
                return self._body_refused(cid, "server_busy", reply, message, self._buffered)
            self._buffered += len(chunk)
            reserved[0] += len(chunk)
            chunks.append(chunk)
        return chunks

    def _body_refused(
        self, cid: str, kind: str, reply: _Reply, message: str, *args: object
    ) -> _Reply:
        """Say (rate-limited) why camera `cid`'s body was refused, count it, give `reply`."""
        self._complaints.warning((cid, kind), message, cid, *args)
        self.metrics.parse_errors.labels(source=SOURCE, kind=kind).inc()
        return reply

    async def _parse(self, body: bytes, camera: _Camera) -> HttpBody | _Reply:
        try:
            if len(body) > PARSE_IN_THREAD_BYTES:
                return await asyncio.to_thread(parse_json_body, body, camera.options)
            return parse_json_body(body, camera.options)
        except CameraProtocolError as exc:
            self._complaints.warning(
                (camera.config.id, exc.kind),
                "camera %s: unreadable body (%d bytes): %s",
                camera.config.id,
                len(body),
                exc,
            )
            self.metrics.parse_errors.labels(source=SOURCE, kind=exc.kind).inc()
            return _Reply(400, {"error": exc.kind, "detail": exc.detail})

    def _parse_query(self, request: web.BaseRequest, camera: _Camera) -> HttpBody | _Reply:
        try:
            # The raw query: aiohttp's decoded one has already turned what is
            # not UTF-8 into U+FFFD; the codec refuses it instead.
            return parse_query_string(request.rel_url.raw_query_string, camera.options)
        except CameraProtocolError as exc:
            self._complaints.warning(
                (camera.config.id, exc.kind),
                "camera %s: unreadable query: %s",
                camera.config.id,
                exc,
            )
            self.metrics.parse_errors.labels(source=SOURCE, kind=exc.kind).inc()
            return _Reply(400, {"error": exc.kind, "detail": exc.detail})

    async def _submit(self, parsed: HttpBody, camera: _Camera, size: int) -> _Reply:
        cid = camera.config.id
        self.metrics.child(self.metrics.camera_frames, cid).inc()
        self._report_problems(parsed, cid)
        event = to_event(parsed, cid, utc_now())
        if isinstance(parsed, HttpCameraNotice) and camera.config.other_events is OtherEvents.SKIP:
            # Counted here: the pipeline (which counts every submitted event) never sees it.
            self.metrics.events_received.labels(camera=cid, source=SOURCE).inc()
            log.debug("camera %s: %s event skipped (other_events: skip)", cid, parsed.kind)
            return _Reply(200, {"status": "skipped", "id": event.id})
        if self.ctx.stopping.is_set():
            return _UNAVAILABLE
        admission = await self._admit(event, cid)
        if admission is None:
            return _UNAVAILABLE
        return self._admission_reply(admission, parsed, event, cid, size)

    def _report_problems(self, parsed: HttpBody, cid: str) -> None:
        """Each unusable field: said (rate-limited) and counted; the read still goes on."""
        for problem in parsed.problems:
            self._complaints.warning(
                (cid, problem.kind),
                "camera %s: field %r unusable (%s): %s",
                cid,
                problem.field,
                problem.kind,
                problem.detail,
            )
            self.metrics.parse_errors.labels(source=SOURCE, kind=problem.kind).inc()

    async def _admit(self, event: AnyEvent, cid: str) -> Admission | None:
        """The pipeline's answer, or None if it did not come within the request timeout."""
        # Shielded: a timed-out request still lets the pipeline finish its write;
        # the camera's retry is then a duplicate, which the pipeline absorbs.
        pending = asyncio.ensure_future(self.ctx.submit(event))
        try:
            async with asyncio.timeout(self.settings.request_timeout_seconds):
                return await asyncio.shield(pending)
        except TimeoutError:
            self._complaints.warning(
                (cid, "submit_timeout"),
                "camera %s: event %s not accepted in time; answered 503",
                cid,
                event.id,
            )
            return None

    def _admission_reply(
        self, admission: Admission, parsed: HttpBody, event: AnyEvent, cid: str, size: int
    ) -> _Reply:
        """200 once the event is taken (stored or a duplicate), else 503: the camera retries."""
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
        self._complaints.warning(
            (cid, admission.value),
            "camera %s: event %s refused (%s); answered 503",
            cid,
            event.id,
            admission.value,
        )
        return _UNAVAILABLE


def _too_large(limit: int) -> _Reply:
    return _Reply(413, {"error": f"body larger than {limit} bytes"}, close=True)


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


async def serve(server: HttpPushServer) -> None:
    """Serve every HTTP camera until cancelled. The server is usually listening
    already (the gateway binds it at start); after a crash it listens again."""
    if not server.listening:
        await server.start()
    # No session exists in push mode: a camera is "online" while we listen for it.
    cameras = server.camera_ids
    for camera_id in cameras:
        server.ctx.set_camera_online(camera_id, True)
    try:
        await asyncio.Event().wait()
    finally:
        for camera_id in cameras:
            server.ctx.set_camera_online(camera_id, False)
        await server.stop()
