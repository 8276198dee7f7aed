"""The beat schedule. Exactly one beat runs (RedBeat holds a lock in Redis)."""

from __future__ import annotations

from typing import Any

from config.settings import Settings


def beat_schedule(settings: Settings) -> dict[str, Any]:
    return {
        "recover-stuck-offers": {
            "task": "offers.recover",
            "schedule": settings.recovery_interval_seconds,
            "kwargs": {"stuck_after_s": settings.recovery_after_seconds},
            # A sweep that waited longer than one interval is stale; the next one replaces it.
            "options": {"expires": settings.recovery_interval_seconds},
        },
        "expire-offers-past-maker-sla": {
            "task": "offers.expire_offers",
            "schedule": settings.sla_check_interval_seconds,
            "options": {"expires": settings.sla_check_interval_seconds},
        },
        "release-expiring-holds": {
            "task": "offers.release_expiring_holds",
            "schedule": settings.hold_watch_interval_seconds,
            "kwargs": {"older_than_s": settings.hold_release_after.total_seconds()},
            "options": {"expires": settings.hold_watch_interval_seconds},
        },
    }
