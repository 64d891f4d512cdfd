"""Log lines a camera cannot amplify: at most one line per key per interval.

A hostile or broken camera can make the same complaint thousands of times a
second (a fake frame header every ten bytes). Metrics carry the exact counts;
the log gets the first occurrence, then at most one line per interval saying
how many were suppressed since.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

DEFAULT_INTERVAL_SECONDS = 60.0
# Bound on remembered keys (camera, kind): the least recently logged go first.
MAX_KEYS = 4096


class RateLimitedLog:
    """`log.warning` with a per-key budget of one line per `interval` seconds.

    `key` is usually `(camera_id, kind)`. The first line for a key is logged at
    once; later ones within the interval are counted, and the next line that is
    let through says "(N similar suppressed in the last Xs)".
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = DEFAULT_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        on_suppressed: Callable[[], None] | None = None,
    ) -> None:
        self._logger = logger
        # e.g. `metrics.log_lines_suppressed.inc`: the count is exact even if no
        # later line ever reports it.
        self._on_suppressed = on_suppressed
        self._interval = interval
        self._clock = clock
        # key → (time of the last line logged, lines suppressed since)
        self._state: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()

    def log(self, level: int, key: Hashable, message: str, *args: Any) -> bool:
        """Log `message % args` unless `key` was logged within the interval; True if logged."""
        if not self._logger.isEnabledFor(level):
            return False
        now = self._clock()
        last = self._state.get(key)
        if last is not None and now - last[0] < self._interval:
            self._state[key] = (last[0], last[1] + 1)
            if self._on_suppressed is not None:
                self._on_suppressed()
            return False
        if last is not None and last[1]:
            message += " (%d similar suppressed in the last %.0fs)"
            args = (*args, last[1], now - last[0])
        self._logger.log(level, message, *args)
        self._state[key] = (now, 0)
        self._state.move_to_end(key)
        while len(self._state) > MAX_KEYS:
            self._state.popitem(last=False)
        return True

    def warning(self, key: Hashable, message: str, *args: Any) -> bool:
        return self.log(logging.WARNING, key, message, *args)

    def info(self, key: Hashable, message: str, *args: Any) -> bool:
        return self.log(logging.INFO, key, message, *args)
