"""The web page's HTTP server: aiohttp in the gateway's own loop.

Reads the gateway's state where it lives (bridge state, metrics, the runtime
controller, the health report) and changes it only through `RuntimeControl`,
the code path of the bridge requests. The history is searched on a
connection and thread of the page's own, never the history writer's.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import functools
import importlib.resources
import importlib.util
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import yarl
from aiohttp import web

from gateway.config import AnyCameraConfig, HttpCameraConfig, RtspCameraConfig, TcpCameraConfig
from gateway.errors import ImageTransformError
from gateway.history import HistoryQuery, HistoryStore
from gateway.images import reencode_jpeg
from gateway.runtime import RequestRefusedError, RuntimeControl
from gateway.ui import pages
from gateway.ui.live import LIVE_IMAGE_BYTES, LIVE_ITEMS, LiveFeed, Watcher
from gateway.ui.security import CSRF_FIELD, CSRF_TOKEN, Access

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger(__name__)

# Live pages connected at once; more are refused (503) rather than each costing a queue.
MAX_WATCHERS = 20
# A watcher whose socket takes this long to take one write is dropped (counted).
WATCHER_WRITE_SECONDS = 10.0
# An SSE comment this often: proxies keep the stream open, dead peers are noticed.
HEARTBEAT_SECONDS = 15.0
GONE_CHECK_SECONDS = 1.0
HISTORY_PAGE_SIZE = 50
STOP_SECONDS = 2.0
# Form fields are short; a bigger body is refused before it is read.
MAX_FORM_BYTES = 64 * 1024
# What was done, shown after a change (it comes back in the redirect's query).
MAX_NOTICE_CHARS = 200

# Scene thumbnails of the live list: this wide, this quality, this many kept
# (~15 KB each: ~1 MB).
THUMBNAIL_WIDTH = 320
THUMBNAIL_QUALITY = 70
THUMBNAILS_KEPT = 64

STATIC_TYPES = {
    "ui.css": "text/css; charset=utf-8",
    "ui.js": "text/javascript; charset=utf-8",
}


def picture_type(data: bytes) -> str | None:
    """The content type of a picture by its first bytes; None: not one we serve as such."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    return None


def camera_address(camera: AnyCameraConfig) -> str:
    """Where the camera is, without any credentials a URL may carry."""
    if isinstance(camera, TcpCameraConfig):
        return f"{camera.host}:{camera.port}"
    if isinstance(camera, HttpCameraConfig):
        return f"POST {camera.path}" if camera.path else "shared path (matched by device/source)"
    if isinstance(camera, RtspCameraConfig):
        url = yarl.URL(camera.url)
        return str(url.with_user(None).with_password(None))
    return "–"


class WebUi:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.config = gateway.config.ui
        self.access = Access(self.config)
        metrics = gateway.metrics
        self.access.on_login_refused = metrics.ui_logins_refused.inc
        self.live = LiveFeed(on_dropped=metrics.ui_live_dropped.inc)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self._history: HistoryStore | None = None
        self._history_executor: ThreadPoolExecutor | None = None
        self._closing = False
        # read id → its scene thumbnail, the oldest made dropped past THUMBNAILS_KEPT
        self._thumbnails: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._thumbnail_maker: ThreadPoolExecutor | None = None
        if importlib.util.find_spec("PIL") is not None:
            self._thumbnail_maker = ThreadPoolExecutor(1, thread_name_prefix="ui-thumbnails")
        # camera → (its count of refused logins, wall time) when it last showed
        # that its login works: more refusals since then is "login refused"
        self._login_worked: dict[str, tuple[float, float]] = {}

    # -- life ----------------------------------------------------------------------------

    async def start(self) -> None:
        gateway = self.gateway
        assert gateway.pipeline is not None and gateway.publisher is not None
        gateway.pipeline.stored_listeners.append(self.live.on_stored)
        gateway.publisher.state.availability_listeners.append(self._camera_availability)
        if gateway.config.history.enabled:
            self._history = HistoryStore.configured(
                gateway.config.history, gateway.config.outbox.path
            )
            self._history_executor = ThreadPoolExecutor(1, thread_name_prefix="ui-history")
            await self._in_history_thread(self._history.open)
        app = web.Application(middlewares=[self.access.middleware], client_max_size=MAX_FORM_BYTES)
        app.on_response_prepare.append(self.access.on_response_prepare)
        routes = [
            web.get("/", self.live_page),
            web.get("/live/events", self.live_events),
            web.get("/image/{read_id}/{kind}", self.image),
            web.get("/cameras", self.cameras_page),
            web.post("/cameras/{camera}/{action}", self.switch_camera),
            web.get("/known", self.known_page),
            web.post("/known/add", self.add_known),
            web.post("/known/remove", self.remove_known),
            web.get("/history", self.history_page),
            web.get("/history.csv", self.history_csv),
            web.get("/health", self.health_page),
            web.get("/static/{name}", self.static),
        ]
        app.add_routes(routes)
        # Live pages hold their request open: on stop they are told to end,
        # and whatever still runs after this long is cancelled.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=STOP_SECONDS)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        addresses = self._runner.addresses
        self.port = addresses[0][1] if addresses else self.config.port
        log.info("web page on http://%s:%d/", self.config.host, self.port)

    async def stop(self) -> None:
        gateway = self.gateway
        if gateway.pipeline is not None:
            with contextlib.suppress(ValueError):
                gateway.pipeline.stored_listeners.remove(self.live.on_stored)
        self._closing = True
        for watcher in list(self.live.watchers):
            watcher.ready.set()  # their loops see `_closing` and end
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._history is not None and self._history_executor is not None:
            await self._in_history_thread(self._history.close)
            self._history_executor.shutdown(wait=True)
        if self._thumbnail_maker is not None:
            self._thumbnail_maker.shutdown(wait=True)

    async def _in_history_thread(self, fn: Any, *args: Any) -> Any:
        assert self._history_executor is not None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._history_executor, fn, *args)

    def _camera_availability(self, camera: str, online: bool) -> None:
        if online:
            self._login_worked[camera] = (
                self.gateway.metrics.auth_failures_of(camera),
                time.time(),
            )

    def _login_refused(self, camera: str, failures: float, last_read: float | None) -> bool:
        """Whether logins of the camera were refused since it last showed that
        its login works (it came online, or a read of it arrived): `failures`
        (its refused logins so far) grew since then."""
        count, when = self._login_worked.get(camera, (0.0, 0.0))
        if last_read is not None and last_read > when:
            # A read is proof too (an HTTP camera is "online" whenever we listen).
            self._login_worked[camera] = (failures, time.time())
            return False
        return failures > count

    # -- Live ------------------------------------------------------------------------------

    async def live_page(self, _request: web.Request) -> web.Response:
        note = (
            f"The last {LIVE_ITEMS} reads are kept in memory with at most "
            f"{LIVE_IMAGE_BYTES // (1024 * 1024)} MB of pictures"
            + ("; older pictures come from the history." if self._history else ".")
        )
        items = self.live.newest_first()
        return _html(pages.live_page(items, note, items[0].seq if items else 0))

    async def live_events(self, request: web.Request) -> web.StreamResponse:
        if len(self.live.watchers) >= MAX_WATCHERS:
            self.gateway.metrics.ui_watchers_refused.inc()
            return web.Response(status=503, text="too many live pages open\n")
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        watcher = self.live.watch()
        gauge = self.gateway.metrics.ui_watchers
        gauge.inc()
        try:
            await response.prepare(request)
            # A reconnecting page says what it saw last: send what it missed.
            # (The first connection says it with `after`: the newest item the
            # page was rendered with; EventSource cannot set the header then.)
            last_seen = _int(request.headers.get("Last-Event-ID") or request.query.get("after"))
            missed = self.live.since(last_seen) if last_seen is not None else []
            await self._send(response, [b"retry: 2000\n\n", *(i.sse_message() for i in missed)])
            await self._pump(request, response, watcher)
        except (ConnectionError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):
                self.gateway.metrics.ui_watchers_dropped.inc()
                log.info("web page: a live page too slow to take its reads was disconnected")
        finally:
            self.live.unwatch(watcher)
            gauge.dec()
        return response

    async def _pump(
        self, request: web.Request, response: web.StreamResponse, watcher: Watcher
    ) -> None:
        quiet_since = time.monotonic()
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                # Woken by a read, or each second to see whether the page went
                # away (aiohttp does not cancel a handler whose peer left).
                async with asyncio.timeout(GONE_CHECK_SECONDS):
                    await watcher.ready.wait()
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            messages = watcher.take()
            if not messages and time.monotonic() - quiet_since < HEARTBEAT_SECONDS:
                continue
            await self._send(response, messages or [b": keep-alive\n\n"])
            quiet_since = time.monotonic()

    @staticmethod
    async def _send(response: web.StreamResponse, messages: Iterable[bytes]) -> None:
        # aiohttp waits for the socket to drain past its high-water mark: a
        # page that stops reading would hold this coroutine (only) forever.
        async with asyncio.timeout(WATCHER_WRITE_SECONDS):
            await response.write(b"".join(messages))

    async def image(self, request: web.Request) -> web.Response:
        read_id, kind = request.match_info["read_id"], request.match_info["kind"]
        if kind not in ("plate", "scene", "thumb"):
            raise web.HTTPNotFound()
        data = self._thumbnails.get(read_id) if kind == "thumb" else None
        if data is None:
            data = await self._picture(read_id, "scene" if kind == "thumb" else kind)
            if data is not None and kind == "thumb":
                data = await self._thumbnail(read_id, data)
        if data is None:
            return web.Response(status=404, text="no such picture (any more)\n")
        content_type = picture_type(data)
        headers = {"Cache-Control": "private, max-age=86400, immutable"}
        if content_type is None:  # not a picture: a download, never rendered
            content_type = "application/octet-stream"
            headers["Content-Disposition"] = "attachment"
        return web.Response(body=data, content_type=content_type, headers=headers)

    async def _picture(self, read_id: str, kind: str) -> bytes | None:
        data = self.live.image(read_id, kind)
        if data is None and self._history is not None:
            data = await self._in_history_thread(self._history.image, read_id, kind)
        return data

    async def _thumbnail(self, read_id: str, scene: bytes) -> bytes:
        """The scene scaled down for the live list (a phone loads ~15 KB a row, not
        ~300 KB), made once on a thread of its own and kept in a small cache.
        Without Pillow (the `images` extra), or for a picture it cannot read
        (only JPEG, pixel count checked before decoding): the scene itself."""
        if self._thumbnail_maker is None:
            return scene
        loop = asyncio.get_running_loop()
        make = functools.partial(reencode_jpeg, scene, THUMBNAIL_QUALITY, THUMBNAIL_WIDTH)
        try:
            thumbnail = await loop.run_in_executor(self._thumbnail_maker, make)
        except ImageTransformError:
            return scene
        self._thumbnails[read_id] = thumbnail
        while len(self._thumbnails) > THUMBNAILS_KEPT:
            self._thumbnails.popitem(last=False)
        return thumbnail

    # -- Cameras ---------------------------------------------------------------------------

    def camera_rows(self) -> list[pages.CameraRow]:
        gateway = self.gateway
        assert gateway.publisher is not None
        state = gateway.publisher.state
        # One pass over each counter for all cameras (a lookup per camera
        # would scan the whole registry each time: slow with many cameras).
        parse_errors = _per_camera(gateway.metrics.camera_parse_errors)
        reconnects = _per_camera(gateway.metrics.camera_reconnects)
        auth_failures = _per_camera(gateway.metrics.camera_auth_failures)
        now_wall, now = time.time(), time.monotonic()
        rows = []
        for camera in gateway.config.cameras:
            shown = state.camera_state(camera.id)
            activity = self.live.cameras.get(camera.id)
            last = activity.last_read if activity else None
            failures = auth_failures.get(camera.id, 0.0)
            if self._login_refused(camera.id, failures, last) and shown != "disabled":
                shown = "login refused"
            rows.append(
                pages.CameraRow(
                    id=camera.id,
                    name=camera.name,
                    protocol=camera.protocol.value,
                    address=camera_address(camera),
                    state=shown,
                    last_read=last,
                    last_read_age=None if last is None else max(0.0, now_wall - last),
                    reads_per_minute=activity.reads_per_minute(now) if activity else 0,
                    parse_errors=int(parse_errors.get(camera.id, 0)),
                    reconnects=int(reconnects.get(camera.id, 0)),
                    enabled=not gateway.switches.is_disabled(camera.id),
                )
            )
        return rows

    async def cameras_page(self, request: web.Request) -> web.Response:
        message = request.query.get("done", "")[:MAX_NOTICE_CHARS] or None
        page = pages.cameras_page(
            self.camera_rows(), request[CSRF_TOKEN], message, self.gateway.runtime is not None
        )
        return _html(page)

    async def switch_camera(self, request: web.Request) -> web.Response:
        form = await self._checked_form(request)
        if isinstance(form, web.Response):
            return form
        camera, action = request.match_info["camera"], request.match_info["action"]
        if action not in ("enable", "disable") or self.gateway.runtime is None:
            raise web.HTTPNotFound()
        try:
            result = await self.gateway.runtime.set_camera_enabled(camera, action == "enable")
        except RequestRefusedError as exc:
            return _html(pages.error_page("Cameras", str(exc), "/cameras"), status=400)
        done = f"camera {camera} {action}d" + ("" if result["changed"] else " (it already was)")
        return _see_other("/cameras", done=done)

    # -- Known plates ----------------------------------------------------------------------

    async def known_page(self, request: web.Request) -> web.Response:
        message = request.query.get("done", "")[:MAX_NOTICE_CHARS] or None
        return _html(self._known_page(request, message, None))

    def _known_page(self, request: web.Request, message: str | None, error: str | None) -> str:
        runtime = self.gateway.runtime
        items = runtime.list_known_plates() if runtime is not None else []
        camera_ids = [c.id for c in self.gateway.config.cameras]
        return pages.known_page(items, camera_ids, request[CSRF_TOKEN], message, error)

    async def add_known(self, request: web.Request) -> web.Response:
        checked = await self._runtime_form(request)
        if isinstance(checked, web.Response):
            return checked
        form, runtime = checked
        name = str(form.get("name", "")).strip()
        plates = [p.strip() for p in str(form.get("plates", "")).split(",") if p.strip()]
        cameras = [str(c) for c in form.getall("cameras", [])] or None
        valid_until = None
        hours_text = str(form.get("valid_hours", "")).strip()
        try:
            if hours_text:
                valid_until = time.time() + float(hours_text) * 3600
            await runtime.add_known_plates(name, plates, cameras, valid_until)
        except ValueError:
            return _html(self._known_page(request, None, "valid for: hours, a number"), 400)
        except RequestRefusedError as exc:
            return _html(self._known_page(request, None, str(exc)), status=400)
        return _see_other("/known", done=f"added {len(plates)} plate(s) to {name}")

    async def remove_known(self, request: web.Request) -> web.Response:
        checked = await self._runtime_form(request)
        if isinstance(checked, web.Response):
            return checked
        form, runtime = checked
        name = str(form.get("name", ""))
        plate = form.get("plate")
        try:
            await runtime.remove_known_plates(name, [str(plate)] if plate else None)
        except RequestRefusedError as exc:
            return _html(self._known_page(request, None, str(exc)), status=400)
        return _see_other("/known", done=f"removed {plate or 'all plates'} of {name}")

    async def _runtime_form(
        self, request: web.Request
    ) -> tuple[Any, RuntimeControl] | web.Response:
        """A known-plates form and the runtime control it goes to, or the refusal."""
        form = await self._checked_form(request)
        if isinstance(form, web.Response):
            return form
        if self.gateway.runtime is None:
            raise web.HTTPNotFound()
        return form, self.gateway.runtime

    async def _checked_form(self, request: web.Request) -> Any:
        """The POSTed form, or the refusal to send back (CSRF)."""
        form = await request.post()
        token = form.get(CSRF_FIELD)
        problem = self.access.csrf_problem(request, token if isinstance(token, str) else None)
        if problem is not None:
            self.gateway.metrics.ui_csrf_refused.inc()
            log.warning("web page: %s %s refused: %s", request.method, request.path, problem)
            return _html(pages.error_page("Refused", problem, "/"), status=403)
        return form

    # -- History ---------------------------------------------------------------------------

    def _history_form(self, request: web.Request) -> tuple[pages.HistoryForm, HistoryQuery, str]:
        q = request.query
        form = pages.HistoryForm(
            plate=q.get("plate", "").strip()[:64],
            fuzzy=q.get("fuzzy") == "1",
            camera=q.get("camera", ""),
            known=q.get("known", "").strip()[:128],
            since=q.get("since", ""),
            until=q.get("until", ""),
        )
        problems = []
        since, until = _utc_epoch(form.since), _utc_epoch(form.until)
        if form.since and since is None:
            problems.append("from: not a date and time")
        if form.until and until is None:
            problems.append("until: not a date and time")
        query = HistoryQuery(
            plate=form.plate or None,
            fuzzy=form.fuzzy,
            camera=form.camera or None,
            known=form.known or None,
            since=since,
            until=until,
        )
        return form, query, "; ".join(problems)

    async def history_page(self, request: web.Request) -> web.Response:
        if self._history is None:
            return _html(pages.history_off_page())
        form, query, error = self._history_form(request)
        page = max(1, _int(request.query.get("page")) or 1)
        offset = (page - 1) * HISTORY_PAGE_SIZE

        def search() -> tuple[list[Any], int]:
            assert self._history is not None
            rows = self._history.search(query, HISTORY_PAGE_SIZE, offset)
            return rows, self._history.count(query)

        rows, total = await self._in_history_thread(search)
        cameras = [c.id for c in self.gateway.config.cameras]
        html = pages.history_page(
            form, rows, total, page, HISTORY_PAGE_SIZE, cameras, error or None
        )
        return _html(html)

    async def history_csv(self, request: web.Request) -> web.StreamResponse:
        if self._history is None:
            return web.Response(status=404, text="the read history is off\n")
        _form, query, error = self._history_form(request)
        if error:
            return web.Response(status=400, text=error + "\n")
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/csv; charset=utf-8",
                "Content-Disposition": f'attachment; filename="lpr-history-{stamp}.csv"',
                "Cache-Control": "no-store",
            }
        )
        await response.prepare(request)
        chunks = self._history.export_csv(query)
        # One chunk (a page of 500 reads) at a time, on the history thread: a
        # large export never holds the loop for long.
        async for chunk in self._chunks(chunks):
            await response.write(chunk.encode("utf-8"))
        await response.write_eof()
        return response

    async def _chunks(self, chunks: Any) -> AsyncIterator[str]:
        done = object()
        while True:
            chunk = await self._in_history_thread(next, chunks, done)
            if chunk is done:
                return
            yield chunk

    # -- Health ------------------------------------------------------------------------------

    async def health_page(self, _request: web.Request) -> web.Response:
        report = self.gateway.health()
        outbox = await self.gateway.outbox_stats()
        metrics = self.gateway.metrics.registry
        ui = {
            "watchers": len(self.live.watchers),
            "dropped": int(metrics.get_sample_value("lpr_ui_live_dropped_total") or 0),
        }
        return _html(pages.health_page(report, outbox, ui))

    # -- static --------------------------------------------------------------------------------

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        content_type = STATIC_TYPES.get(name)
        if content_type is None:
            raise web.HTTPNotFound()
        data = importlib.resources.files("gateway.ui").joinpath("static", name).read_bytes()
        return web.Response(
            body=data,
            headers={"Content-Type": content_type, "Cache-Control": "public, max-age=3600"},
        )


def _per_camera(counter: Any) -> dict[str, float]:
    """A counter labelled by camera (and maybe more): its total per camera."""
    totals: dict[str, float] = {}
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                camera = sample.labels["camera"]
                totals[camera] = totals.get(camera, 0.0) + sample.value
    return totals


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(
        text=text,
        status=status,
        content_type="text/html",
        charset="utf-8",
        headers={"Cache-Control": "no-store"},
    )


def _see_other(path: str, **query: str) -> web.Response:
    """After a POST: back to the page (POST/redirect/GET), saying what was done."""
    location = f"{path}?{urllib.parse.urlencode(query)}" if query else path
    return web.Response(status=303, headers={"Location": location})


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def _utc_epoch(text: str) -> float | None:
    """A `datetime-local` value (`2026-12-02T13:40` or with seconds), read as UTC."""
    if not text:
        return None
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()
