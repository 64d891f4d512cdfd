"""The bridge request API and event feed, in Zigbee2MQTT's shape.

A JSON request on `<base>/bridge/request/<path>` is answered on
`<base>/bridge/response/<path>` with `{"status": "ok", "data": …}` or
`{"status": "error", "data": {}, "error": "<reason>"}`, echoing the request's
`transaction`. Requests are taken from a bounded queue by one worker, in
order: a flood is answered `busy`, never buffered without end, and a
request, however hostile, is only ever an error response and a count
(`lpr_bridge_requests_total{request,status}`), never a disturbance of
publishing.

`<base>/bridge/event` (not retained) says what an operator wants to see:
cameras going online or offline, switched off or on, a login refused, a
known-plates change, an event set aside as a dead letter, each with its time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from gateway.metrics import Metrics
from gateway.runtime import KnownPlatesChange, RequestRefusedError, RuntimeControl
from gateway.topics import Topics

log = logging.getLogger(__name__)

# A request larger than this is refused unread (a known_plates/add of 1,000
# plates is ~20 KB).
MAX_REQUEST_BYTES = 64 * 1024
# Requests waiting for the worker; beyond it they are answered `busy`.
MAX_QUEUED_REQUESTS = 64
MAX_TRANSACTION_CHARS = 256
# A camera's refused logins are announced at most this often (an HTTP camera
# with a wrong password retries every few seconds).
LOGIN_REFUSED_EVENT_SECONDS = 60.0
# Events kept while the broker is away (the newest; older ones are dropped).
HELD_EVENTS = 100
# The `request` label of a path that is no request: the label set stays bounded.
UNKNOWN_REQUEST = "unknown"


class Publisher(Protocol):
    """What the API needs of the MQTT side (`gateway.mqtt.state.BridgeState`)."""

    def publish_state(self, topic: str, payload: bytes, retain: bool = True) -> None: ...

    def subscribe(self, topic: str, handler: Callable[[str, bytes, bool], None]) -> None: ...


def utc_stamp(epoch: float | None = None) -> str:
    now = time.time() if epoch is None else epoch
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


class BridgeEvents:
    """`<base>/bridge/event`: fire and forget (not retained, lost while the broker is)."""

    def __init__(
        self,
        topics: Topics,
        publisher: Publisher,
        quiet: Callable[[], bool] = lambda: False,
        connected: Callable[[], bool] = lambda: True,
    ) -> None:
        self.topic = topics.bridge_event
        self.publisher = publisher
        # Events while the broker is away (a camera refusing its login at start,
        # before the first CONNACK) are kept, the newest few, and sent on connect.
        self.connected = connected
        self._held: deque[bytes] = deque(maxlen=HELD_EVENTS)
        # True while the gateway is stopping: every camera going offline then is
        # the shutdown, which `bridge/state` already says.
        self.quiet = quiet
        self._login_refused_said: dict[str, float] = {}

    def emit(self, kind: str, **data: Any) -> None:
        document = {"type": kind, "time": utc_stamp(), "data": data}
        payload = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        if not self.connected():
            self._held.append(payload)
            return
        self.publisher.publish_state(self.topic, payload, retain=False)

    def flush(self) -> None:
        """Just connected: the events held meanwhile, oldest first."""
        while self._held:
            self.publisher.publish_state(self.topic, self._held.popleft(), retain=False)

    def camera_availability(self, camera: str, online: bool) -> None:
        if not self.quiet():
            self.emit("camera_online" if online else "camera_offline", camera=camera)

    def camera_switched(self, camera: str, enabled: bool) -> None:
        self.emit("camera_enabled" if enabled else "camera_disabled", camera=camera)

    def login_refused(self, camera: str, detail: str) -> None:
        now = time.monotonic()
        said = self._login_refused_said.get(camera)
        if said is not None and now - said < LOGIN_REFUSED_EVENT_SECONDS:
            return
        self._login_refused_said[camera] = now
        self.emit("login_refused", camera=camera, detail=detail[:300])

    def dead_letter(self, event_id: str, camera: str, reason: str) -> None:
        self.emit("dead_letter", event_id=event_id, camera=camera, reason=reason[:300])

    def known_plates_changed(self, change: KnownPlatesChange) -> None:
        self.emit(
            "known_plates_changed", action=change.action, name=change.name, plates=change.plates
        )


class BadRequestError(Exception):
    """The request itself is wrong (not JSON, wrong fields): said in the response."""


@dataclass(frozen=True, slots=True)
class Request:
    path: str
    arguments: dict[str, Any]
    transaction: str | int | float | None
    has_transaction: bool


def parse_request(path: str, payload: bytes) -> Request:
    """The request's arguments (a JSON object; `""` for none; a bare string for
    the one argument of a request that has one) and its transaction.
    `BadRequestError` says what is wrong."""
    if len(payload) > MAX_REQUEST_BYTES:
        raise BadRequestError(f"request of {len(payload)} bytes (at most {MAX_REQUEST_BYTES})")
    text = payload.strip()
    if not text:
        return Request(path, {}, None, False)
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:  # bad UTF-8, bad JSON, nesting too deep
        single = SINGLE_ARGUMENT.get(path)
        bare = _bare_text(text)
        if single is None or bare is None:
            raise BadRequestError(f"not valid JSON: {str(exc)[:200]}") from exc
        # `mosquitto_pub -m gate_in`: the one argument, unquoted (as Zigbee2MQTT takes it).
        return Request(path, {single: bare}, None, False)
    if isinstance(document, str):
        # Zigbee2MQTT takes `camera/disable` with the bare id: so do we.
        single = SINGLE_ARGUMENT.get(path)
        if single is None:
            raise BadRequestError("expected a JSON object")
        return Request(path, {single: document}, None, False)
    if not isinstance(document, dict):
        raise BadRequestError("expected a JSON object")
    has_transaction = "transaction" in document
    transaction = document.pop("transaction", None)
    if transaction is not None and (
        isinstance(transaction, bool)
        or not isinstance(transaction, str | int | float)
        or (isinstance(transaction, str) and len(transaction) > MAX_TRANSACTION_CHARS)
    ):
        raise BadRequestError(
            f"transaction: expected a string (at most {MAX_TRANSACTION_CHARS} characters) "
            "or a number"
        )
    return Request(path, document, transaction, has_transaction)


def _bare_text(payload: bytes) -> str | None:
    """A payload that is a plain word or name (not JSON gone wrong), or None."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if len(text) > 200 or text[0] in '{["' or not text.isprintable():
        return None
    return text


def _take(request: Request, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    unknown = sorted(set(request.arguments) - set(required) - set(optional))
    if unknown:
        allowed = ", ".join((*required, *optional)) or "none"
        raise BadRequestError(f"unknown field(s) {', '.join(unknown)[:200]} (allowed: {allowed})")
    missing = [key for key in required if key not in request.arguments]
    if missing:
        raise BadRequestError(f"missing field(s): {', '.join(missing)}")


def parse_time(value: Any) -> float:
    """An ISO 8601 time with its zone (`2027-01-31T00:00:00Z`) as epoch seconds."""
    if not isinstance(value, str) or len(value) > 64:
        raise BadRequestError("valid_until: expected an ISO 8601 time such as 2027-01-31T00:00:00Z")
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise BadRequestError(
            f"valid_until: not an ISO 8601 time: {value[:64]!r} (e.g. 2027-01-31T00:00:00Z)"
        ) from exc
    if moment.tzinfo is None:
        raise BadRequestError("valid_until: give the time zone (Z for UTC, or +01:00)")
    return moment.timestamp()


# Requests that take one argument, also as a bare JSON string.
SINGLE_ARGUMENT = {"camera/enable": "id", "camera/disable": "id", "known_plates/remove": "name"}

Handler = Callable[[Request], Awaitable[Any]]


class BridgeRequests:
    """Subscribes to `<base>/bridge/request/#` and answers each request in order."""

    def __init__(
        self,
        topics: Topics,
        publisher: Publisher,
        metrics: Metrics,
        runtime: RuntimeControl,
        *,
        health: Callable[[], dict[str, Any]],
        outbox_stats: Callable[[], Awaitable[dict[str, Any]]],
        republish_discovery: Callable[[], dict[str, Any]] | None,
    ) -> None:
        self.topics = topics
        self.publisher = publisher
        self.metrics = metrics
        self.runtime = runtime
        self.health = health
        self.outbox_stats = outbox_stats
        self.republish_discovery = republish_discovery
        self._prefix = topics.bridge_request("")
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(MAX_QUEUED_REQUESTS)
        self.handlers: dict[str, Handler] = {
            "known_plates/list": self._known_plates_list,
            "known_plates/add": self._known_plates_add,
            "known_plates/remove": self._known_plates_remove,
            "camera/enable": self._camera_enable,
            "camera/disable": self._camera_disable,
            # {"id": ..., "enabled": true|false}: one topic for both ways, what a
            # Home Assistant switch (one command topic) can send.
            "camera/switch": self._camera_switch,
            "health_check": self._health_check,
            "outbox/stats": self._outbox_stats,
            "discovery/republish": self._discovery_republish,
        }
        for path in self.handlers:  # every series from zero, for dashboards
            for status in ("ok", "error"):
                metrics.bridge_requests.labels(request=path, status=status)

    def attach(self) -> None:
        self.publisher.subscribe(self._prefix + "#", self._on_message)

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        """On the loop, for every message: queued, never handled here."""
        path = topic[len(self._prefix) :]
        if retained:
            # A retained request would be carried out again after every reconnect.
            self._answer(path, None, error="retained requests are ignored: publish without retain")
            return
        try:
            self._queue.put_nowait((path, payload))
        except asyncio.QueueFull:
            self._answer(path, None, error="busy: too many requests waiting; try again")

    async def run(self) -> None:
        """The worker: one request at a time, in arrival order, until cancelled."""
        while True:
            path, payload = await self._queue.get()
            await self.handle(path, payload)

    async def handle(self, path: str, payload: bytes) -> None:
        # The parsed request, once it could be parsed: its transaction is echoed.
        parsed: Request | None = None
        try:
            request = parse_request(path, payload)
            parsed = request
            handler = self.handlers.get(path)
            if handler is None:
                known = ", ".join(self.handlers)
                raise BadRequestError(f"unknown request {path[:100]!r} (known: {known})")
            data = await handler(request)
        except (BadRequestError, RequestRefusedError) as exc:
            self._answer(path, parsed, error=str(exc))
        except Exception as exc:  # a bug: said loudly, answered, and the worker goes on
            log.exception("bridge request %s failed", path[:100])
            self._answer(path, parsed, error=f"internal error: {type(exc).__name__}")
        else:
            self._answer(path, parsed, data=data)

    def _answer(
        self, path: str, request: Request | None, *, data: Any = None, error: str | None = None
    ) -> None:
        label = path if path in self.handlers else UNKNOWN_REQUEST
        status = "ok" if error is None else "error"
        self.metrics.bridge_requests.labels(request=label, status=status).inc()
        response: dict[str, Any] = {"status": status, "data": {} if data is None else data}
        if error is not None:
            response["error"] = error
            log.info("bridge request %s refused: %s", path[:100], error[:300])
        if request is not None and request.has_transaction:
            response["transaction"] = request.transaction
        # Answered on the request's own path, like Zigbee2MQTT; an unknown path
        # came from a client and is used only when it is made of plain levels.
        topic = self.topics.bridge_response(path if path in self.handlers else _safe_path(path))
        self.publisher.publish_state(
            topic, json.dumps(response, ensure_ascii=False).encode(), retain=False
        )

    # -- the requests ---------------------------------------------------------------

    async def _known_plates_list(self, request: Request) -> Any:
        _take(request, ())
        return {"known_plates": self.runtime.list_known_plates()}

    async def _known_plates_add(self, request: Request) -> Any:
        _take(request, ("name", "plates"), ("cameras", "valid_until"))
        arguments = request.arguments
        cameras = arguments.get("cameras")
        if cameras is not None and (
            not isinstance(cameras, list) or not all(isinstance(c, str) for c in cameras)
        ):
            raise BadRequestError("cameras: expected a list of camera ids")
        until = arguments.get("valid_until")
        return await self.runtime.add_known_plates(
            arguments["name"],
            arguments["plates"],
            cameras,
            parse_time(until) if until is not None else None,
        )

    async def _known_plates_remove(self, request: Request) -> Any:
        _take(request, ("name",), ("plates",))
        name = request.arguments["name"]
        if not isinstance(name, str):
            raise BadRequestError("name: expected a string")
        return await self.runtime.remove_known_plates(name, request.arguments.get("plates"))

    async def _camera_enable(self, request: Request) -> Any:
        _take(request, ("id",))
        return await self.runtime.set_camera_enabled(request.arguments["id"], True)

    async def _camera_disable(self, request: Request) -> Any:
        _take(request, ("id",))
        return await self.runtime.set_camera_enabled(request.arguments["id"], False)

    async def _camera_switch(self, request: Request) -> Any:
        _take(request, ("id", "enabled"))
        enabled = request.arguments["enabled"]
        if not isinstance(enabled, bool):
            raise BadRequestError("enabled: expected true or false")
        return await self.runtime.set_camera_enabled(request.arguments["id"], enabled)

    async def _health_check(self, request: Request) -> Any:
        _take(request, ())
        return self.health()

    async def _outbox_stats(self, request: Request) -> Any:
        _take(request, ())
        return await self.outbox_stats()

    async def _discovery_republish(self, request: Request) -> Any:
        _take(request, ())
        if self.republish_discovery is None:
            raise RequestRefusedError(
                "Home Assistant discovery is off (homeassistant.enabled: false)"
            )
        return self.republish_discovery()


def _safe_path(path: str) -> str:
    """An unknown request's path as a response topic: it came from a client, so
    only plain levels are kept (`unknown` when nothing usable is left)."""
    levels = path.split("/")
    if 0 < len(levels) <= 4 and all(
        0 < len(level) <= 64 and all(ch.isascii() and (ch.isalnum() or ch in "_-.") for ch in level)
        for level in levels
    ):
        return path
    return UNKNOWN_REQUEST
