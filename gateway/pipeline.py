"""Pipeline: normalise → duplicate suppression → enrich → durable outbox.

(implementation in progress; the Admission contract below is fixed)
"""

from __future__ import annotations

import enum


class Admission(enum.Enum):
    ACCEPTED = "accepted"  # durably in the outbox: safe to acknowledge the camera
    DUPLICATE = "duplicate"  # suppressed by dedup (counted); the camera may be told OK
    OUTBOX_FULL = "outbox_full"  # refused and counted; HTTP answers 503
    SHUTTING_DOWN = "shutting_down"  # refused; HTTP answers 503

    @property
    def taken(self) -> bool:
        """Whether the camera can be told its read is safe (no need to resend)."""
        return self in (Admission.ACCEPTED, Admission.DUPLICATE)
