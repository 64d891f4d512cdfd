"""The camera supervisor: one reconnect loop for every camera adapter, driven by
scripted sessions (no sockets) with a fast `ReconnectPolicy`."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterator

import pytest

from gateway.adapters.base import (
    AdapterContext,
    Outcome,
    ReconnectPolicy,
    SessionProgress,
    supervise,
)
from gateway.config import Config
from gateway.metrics import Metrics
from gateway.pipeline import Admission

log = logging.getLogger("tests.supervisor")
FAST = ReconnectPolicy(initial_seconds=0.01, max_seconds=0.02, auth_retry_seconds=0.01)


class Spine:
    def __init__(self) -> None:
        self.metrics = Metrics()
        self.stopping = asyncio.Event()
        self.availability: list[bool] = []

    def context(self) -> AdapterContext:
        async def submit(_: object) -> Admission:
            return Admission.ACCEPTED

        return AdapterContext(
            config=Config(),
            metrics=self.metrics,
            submit=submit,
            set_camera_online=lambda _cam, online: self.availability.append(online),
            stopping=self.stopping,
        )

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


async def run_sessions(spine: Spine, script: Iterator[Outcome | Exception], **marks: bool) -> int:
    """Run `supervise` over the scripted session ends; stop when the script does."""
    sessions = 0

    async def session(progress: SessionProgress) -> Outcome:
        nonlocal sessions
        sessions += 1
        end = next(script, None)
        if end is None:
            spine.stopping.set()
            return Outcome.STOPPED
        if marks.get("established"):
            progress.established()
        if isinstance(end, Exception):
            raise end
        return end

    await asyncio.wait_for(
        supervise("cam", session, FAST, spine.context(), source="tcp", log=log), 5
    )
    return sessions


async def test_reconnects_count_every_session_after_the_first() -> None:
    spine = Spine()
    sessions = await run_sessions(spine, iter([Outcome.CLOSED, Outcome.CONNECT_FAILED]))
    assert sessions == 3
    assert spine.sample("lpr_camera_reconnects_total", camera="cam") == 2


async def test_a_camera_that_stays_connected_has_no_reconnects() -> None:
    spine = Spine()
    assert await run_sessions(spine, iter([])) == 1
    assert spine.sample("lpr_camera_reconnects_total", camera="cam") == 0
    assert spine.availability == [False]


async def test_availability_follows_established_sessions() -> None:
    spine = Spine()
    await run_sessions(spine, iter([Outcome.CLOSED]), established=True)
    assert spine.availability == [False, True, False]


async def test_a_crashing_session_is_counted_and_served_on() -> None:
    spine = Spine()
    sessions = await run_sessions(spine, iter([RuntimeError("bug"), ConnectionResetError()]))
    assert sessions == 3
    assert spine.sample("lpr_parse_errors_total", source="tcp", kind="internal") == 1
    assert spine.sample("lpr_camera_parse_errors_total", camera="cam", kind="internal") == 1


@pytest.mark.parametrize(
    ("failures", "low", "high"),
    [(1, 0.5, 1.0), (2, 1.0, 2.0), (4, 4.0, 8.0), (30, 30.0, 60.0)],
)
def test_the_first_wait_is_at_most_the_initial_delay(
    failures: int, low: float, high: float
) -> None:
    policy = ReconnectPolicy(initial_seconds=1.0, max_seconds=60.0)
    rng = random.Random(failures)
    delays = [policy.delay(failures, rng) for _ in range(50)]
    assert all(low <= d <= high for d in delays)
    assert len(set(delays)) > 1
