"""What every input adapter is given, and the contract it keeps with the spine.

An adapter module (`gateway/adapters/<protocol>.py`) exposes

    async def run(ctx: AdapterContext, cameras: Sequence[<Protocol>CameraConfig]) -> None

which serves all configured cameras of its protocol until cancelled (the
gateway cancels it at shutdown, after `ctx.stopping` is set). It hands every
read to `ctx.submit(...)`, reports each camera session with
`ctx.set_camera_online(...)` and counts what it sees in `ctx.metrics`.
`supervise` is the reconnect loop every camera adapter shares: the adapter
supplies one session, the supervisor the retries, the backoff, availability
and the reconnect count.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gateway.config import Config
from gateway.event import AnyEvent
from gateway.log_limit import RateLimitedLog
from gateway.metrics import Metrics
from gateway.pipeline import Admission

_T = TypeVar("_T")
_Protocol = TypeVar("_Protocol", bound=asyncio.BaseProtocol)


class CameraSwitches:
    """Which cameras are switched off at runtime (`camera/disable`), for the adapters.

    A disabled camera's session is closed and not opened again (TCP, RTSP:
    the supervisor waits here), and its HTTP requests are answered 503. The
    runtime controller switches; `listeners` hear every change (bridge
    state, events, and whatever else wants to follow a camera's switch).
    """

    def __init__(self, disabled: Iterable[str] = ()) -> None:
        self._disabled: set[str] = set(disabled)
        # camera → the running session task, cancelled when the camera is disabled
        self._sessions: dict[str, asyncio.Task[Outcome]] = {}
        self._enabled_again: dict[str, asyncio.Event] = {}
        self.listeners: list[Callable[[str, bool], None]] = []

    @property
    def disabled(self) -> frozenset[str]:
        return frozenset(self._disabled)

    def is_disabled(self, camera: str) -> bool:
        return camera in self._disabled

    def set_enabled(self, camera: str, enabled: bool) -> bool:
        """Switch `camera`; False when it already was so."""
        if enabled != (camera in self._disabled):
            return False
        if enabled:
            self._disabled.discard(camera)
            waiter = self._enabled_again.pop(camera, None)
            if waiter is not None:
                waiter.set()
        else:
            self._disabled.add(camera)
            session = self._sessions.get(camera)
            if session is not None and not session.done():
                session.cancel()
        for listener in self.listeners:
            listener(camera, enabled)
        return True

    async def wait_enabled(self, camera: str) -> None:
        while camera in self._disabled:
            await self._enabled_again.setdefault(camera, asyncio.Event()).wait()

    def session_started(self, camera: str, task: asyncio.Task[Outcome]) -> None:
        self._sessions[camera] = task

    def session_ended(self, camera: str, task: asyncio.Task[Outcome]) -> None:
        if self._sessions.get(camera) is task:
            del self._sessions[camera]


def _ignore_login_refused(_camera: str, _detail: str) -> None:
    pass


@dataclass(frozen=True, slots=True)
class AdapterContext:
    config: Config
    metrics: Metrics
    # Resolves once the event is durably in the outbox (ACCEPTED), was
    # suppressed as a duplicate (DUPLICATE), or could not be taken
    # (OUTBOX_FULL, SHUTTING_DOWN). Awaiting it is the backpressure.
    submit: Callable[[AnyEvent], Awaitable[Admission]]
    set_camera_online: Callable[[str, bool], None]
    stopping: asyncio.Event
    switches: CameraSwitches = field(default_factory=CameraSwitches)
    # A camera refused our login, or sent wrong credentials (camera, why): said
    # once per spell by the adapters, announced on the bridge event topic.
    login_refused: Callable[[str, str], None] = _ignore_login_refused


def backoff_delay(
    attempt: int, initial: float, cap: float, rng: random.Random | None = None
) -> float:
    """Reconnect delay after `attempt` failures: initial * 2**attempt, capped, equal jitter.

    Half the delay is fixed, half random, so a fleet of cameras that dropped
    together (a switch reboot) does not reconnect in lockstep.
    """
    ceiling = min(cap, initial * 2.0 ** min(attempt, 30))
    jitter: float = (rng or random).uniform(0, ceiling / 2)
    return ceiling / 2 + jitter


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """When a camera's next session starts after one ends.

    After the n-th failed session in a row the supervisor waits
    `backoff_delay(n - 1, initial_seconds, max_seconds)`: the first wait is
    between half of `initial_seconds` and all of it, each further failure
    doubles it up to `max_seconds`. A healthy session (established, and it
    delivered a read or lasted `healthy_after_seconds`) resets the count.
    Refused credentials will not fix themselves: they are retried every
    `auth_retry_seconds`, whatever the count.

    `frame_stall_seconds` is how long a session waits for the rest of a frame
    whose header came (TCP): then the header is taken to be corrupt and the
    frame given up (a real 16 MiB frame takes well under a second on a LAN).
    """

    initial_seconds: float = 1.0
    max_seconds: float = 60.0
    auth_retry_seconds: float = 60.0
    healthy_after_seconds: float = 30.0
    frame_stall_seconds: float = 15.0

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """The wait after `failures` (>= 1) failed sessions in a row."""
        return backoff_delay(failures - 1, self.initial_seconds, self.max_seconds, rng)


class Outcome(enum.Enum):
    """How one camera session ended."""

    CONNECT_FAILED = "connect_failed"  # no connection
    AUTH_FAILED = "auth_failed"  # credentials refused: retried slowly
    FAILED = "failed"  # connected, but the login/handshake or the protocol failed
    CLOSED = "closed"  # the camera closed, went silent, or broke the stream
    STOPPED = "stopped"  # the gateway is shutting down
    DISABLED = "disabled"  # switched off at runtime: no new session until enabled


class SessionProgress:
    """What the current session has achieved; the adapter marks it as it goes.

    Kept by the supervisor, so a session that crashes still counts for what it
    did. `established()` is the camera going online.
    """

    def __init__(self, supervisor: _Supervisor) -> None:
        self._supervisor = supervisor
        self.is_established = False
        self.has_delivered = False

    def established(self) -> None:
        self.is_established = True
        self._supervisor.set_online(True)

    def delivered(self) -> None:
        self.has_delivered = True

    async def connect(
        self, host: str, port: int, connect_timeout: float, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """Open the connection, or None (said once per outage, then at debug level)."""
        return await self._supervisor.connect(host, port, connect_timeout, **kwargs)

    async def connect_protocol(
        self, host: str, port: int, connect_timeout: float, factory: Callable[[], _Protocol]
    ) -> _Protocol | None:
        """Open the connection served by `factory()`'s protocol, or None (as `connect`)."""
        return await self._supervisor.connect_protocol(host, port, connect_timeout, factory)


Session = Callable[[SessionProgress], Awaitable[Outcome]]


async def supervise(
    camera_id: str,
    session: Session,
    policy: ReconnectPolicy,
    ctx: AdapterContext,
    *,
    source: str,
    log: logging.Logger,
) -> None:
    """Run `session` for one camera again and again until the gateway stops.

    The camera is reported offline at the start and after every session (the
    session reports it online through `SessionProgress.established`).
    `lpr_camera_reconnects_total` counts each session after the first, when it
    starts, so a camera that stays connected shows 0. A session that raises is
    logged (with the traceback unless it is a connection error) and counted as
    an `internal` parse error; the camera is served on.
    """
    await _Supervisor(camera_id, policy, ctx, source, log).run(session)


class ParseErrors:
    """A camera session's parse errors: each counted exactly (`lpr_parse_errors` by
    source, `lpr_camera_parse_errors` by camera) and logged through the shared
    rate-limited log, keyed by (camera, kind), with the camera id in front."""

    def __init__(
        self, metrics: Metrics, source: str, camera_id: str, complaints: RateLimitedLog
    ) -> None:
        self._metrics = metrics
        self._source = source
        self._camera = camera_id
        self._complaints = complaints

    def report(self, kind: str, message: str, *args: Any, level: int = logging.WARNING) -> None:
        """Count `kind` and log `camera <id>: message % args` (rate-limited)."""
        self._metrics.camera_parse_error(self._source, self._camera, kind)
        self._complaints.log(
            level, (self._camera, kind), "camera %s: " + message, self._camera, *args
        )


class _Supervisor:
    def __init__(
        self,
        camera_id: str,
        policy: ReconnectPolicy,
        ctx: AdapterContext,
        source: str,
        log: logging.Logger,
    ) -> None:
        self.camera_id = camera_id
        self.policy = policy
        self.ctx = ctx
        self.source = source
        self.log = log
        self.online = False
        self._connect_failure_said = False

    async def run(self, session: Session) -> None:
        cam, stopping = self.camera_id, self.ctx.stopping
        switches = self.ctx.switches
        self.ctx.set_camera_online(cam, False)
        failures = 0
        first = True
        try:
            while not stopping.is_set():
                if switches.is_disabled(cam):
                    self.log.info("camera %s: disabled; no session until it is enabled", cam)
                    await _first_of(switches.wait_enabled(cam), stopping.wait())
                    failures = 0  # enabled again: start at once, with a fresh backoff
                    continue
                if not first:
                    self.ctx.metrics.camera_reconnects.labels(camera=cam).inc()
                first = False
                started = time.monotonic()
                progress = SessionProgress(self)
                try:
                    outcome = await self._run_once(session, progress)
                finally:
                    self.set_online(False)
                if outcome is Outcome.STOPPED or stopping.is_set():
                    break
                if outcome is Outcome.DISABLED:
                    continue  # not a failure: wait to be enabled, then start at once
                lasted = time.monotonic() - started >= self.policy.healthy_after_seconds
                if progress.is_established and (progress.has_delivered or lasted):
                    failures = 0
                if outcome is Outcome.AUTH_FAILED:
                    delay = self.policy.auth_retry_seconds
                else:
                    failures += 1
                    delay = self.policy.delay(failures)
                quiet = outcome is Outcome.CONNECT_FAILED
                self.log.log(
                    logging.DEBUG if quiet else logging.INFO,
                    "camera %s: session ended (%s); reconnecting in %.1f s",
                    cam,
                    outcome.value,
                    delay,
                )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stopping.wait()
        finally:
            self.set_online(False)

    async def _run_once(self, session: Session, progress: SessionProgress) -> Outcome:
        """One session in a task of its own, so that disabling the camera can
        cancel it (closing the connection) without cancelling the supervisor."""
        cam, switches = self.camera_id, self.ctx.switches
        task = asyncio.create_task(self._session(session, progress), name=f"{self.source}-{cam}")
        switches.session_started(cam, task)
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if (current is not None and current.cancelling()) or not switches.is_disabled(cam):
                raise
            self.log.info("camera %s: disabled at runtime; session closed", cam)
            return Outcome.DISABLED
        finally:
            switches.session_ended(cam, task)

    async def _session(self, session: Session, progress: SessionProgress) -> Outcome:
        cam = self.camera_id
        try:
            return await session(progress)
        except (ConnectionError, OSError) as exc:
            self.log.warning("camera %s: connection lost: %s", cam, exc)
            return Outcome.CLOSED
        except Exception:  # the task's top: log, count, serve the camera on
            self.log.exception("camera %s: session crashed; reconnecting", cam)
            self.ctx.metrics.camera_parse_error(self.source, cam, "internal")
            return Outcome.FAILED

    def set_online(self, online: bool) -> None:
        if online != self.online:
            self.online = online
            self.ctx.set_camera_online(self.camera_id, online)

    async def connect(
        self, host: str, port: int, connect_timeout: float, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        return await self._open(
            host, port, connect_timeout, lambda: asyncio.open_connection(host, port, **kwargs)
        )

    async def connect_protocol(
        self, host: str, port: int, connect_timeout: float, factory: Callable[[], _Protocol]
    ) -> _Protocol | None:
        loop = asyncio.get_running_loop()
        opened = await self._open(
            host, port, connect_timeout, lambda: loop.create_connection(factory, host, port)
        )
        return None if opened is None else opened[1]

    async def _open(
        self, host: str, port: int, connect_timeout: float, opening: Callable[[], Awaitable[_T]]
    ) -> _T | None:
        try:
            # Not wait_for: on Python 3.11 it swallows a cancel (stop, the camera
            # disabled) that lands as the connection opens.
            async with asyncio.timeout(connect_timeout):
                connection = await opening()
        except (OSError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            # Said once per outage: a camera that is off for a night must not
            # fill the log.
            if not self._connect_failure_said:
                self._connect_failure_said = True
                self.log.warning(
                    "camera %s: cannot connect to %s:%d: %s (will keep trying)",
                    self.camera_id,
                    host,
                    port,
                    reason,
                )
            else:
                self.log.debug("camera %s: connect failed again: %s", self.camera_id, reason)
            return None
        self._connect_failure_said = False
        return connection


async def _first_of(*waits: Awaitable[Any]) -> None:
    """Wait until one of `waits` is done; the others are cancelled."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
