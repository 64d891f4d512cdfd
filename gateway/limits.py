"""Process limits raised at start-up: the open-file soft limit up to the hard one.

Every camera connection, HTTP client, outbox file and broker session is a file
descriptor. Distributions often start services with a soft limit of 1024 (or
less) under a hard limit of 64k or more: a flood of the camera port would use
the soft limit up while the process may take far more. Never fails the start:
a limit that cannot be raised is logged and the gateway runs with what it has.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

# An "unlimited" hard limit is not a number setrlimit takes for NOFILE on every
# system (macOS refuses above OPEN_MAX): aim at this then.
_UNLIMITED_TARGET = 1 << 20


def raise_open_file_limit() -> tuple[int, int]:
    """Raise RLIMIT_NOFILE's soft limit to its hard limit; (soft, hard) afterwards.

    Logs once what it did. Where the platform has no such limit, (-1, -1).
    """
    try:
        import resource
    except ImportError:  # not a POSIX system
        log.info("open-file limit: not available on this platform, left as it is")
        return -1, -1
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError) as exc:
        log.warning("open-file limit: could not be read (%s); left as it is", exc)
        return -1, -1
    target = _UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            log.warning(
                "open-file limit: could not raise %d to %d (%s); running with %d",
                soft,
                target,
                exc,
                soft,
            )
            return soft, hard
        log.info("open-file limit raised from %d to %d (the hard limit)", soft, target)
        return target, hard
    log.info("open-file limit: %s (already at the hard limit)", _show(soft))
    return soft, hard


def _show(limit: int) -> str:
    import resource

    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)
