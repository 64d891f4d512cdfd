"""What every input adapter is given, and the contract it keeps with the spine.

An adapter module (`gateway/adapters/<protocol>.py`) exposes

    async def run(ctx: AdapterContext, cameras: Sequence[<Protocol>CameraConfig]) -> None

which serves all configured cameras of its protocol until cancelled (the
gateway cancels it at shutdown, after `ctx.stopping` is set). It hands every
read to `ctx.submit(...)`, reports each camera session with
`ctx.set_camera_online(...)` and counts what it sees in `ctx.metrics`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.config import Config
from gateway.event import AnyEvent
from gateway.metrics import Metrics
from gateway.pipeline import Admission


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
