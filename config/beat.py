"""The beat schedule. Exactly one beat runs (RedBeat holds a lock in Redis)."""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab

from config.settings import ConfigError, Settings

#: How often old draft validations are deleted: an hour's rows at a time keeps each run short.
DRAFT_TRIM_INTERVAL_S = 3600


def _crontab(value: str, setting: str) -> crontab:
    minute, hour, day_of_month, month_of_year, day_of_week = value.split()
    try:
        return crontab(
            minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month_of_year, day_of_week=day_of_week
        )
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid configuration: {setting}: {exc}") from None


def audit_export_schedule(settings: Settings) -> crontab:
    return _crontab(settings.audit_export_cron, "OFFERS_AUDIT_EXPORT_CRON")


def beat_schedule(settings: Settings) -> dict[str, Any]:
    return {
        "recover-stuck-offers": {
            "task": "offers.recover",
            "schedule": settings.recovery_interval_seconds,
            # A sweep that waited longer than one interval is stale; the next one replaces it.
            "options": {"expires": settings.recovery_interval_seconds},
        },
        "seal-audit-trail": {
            "task": "offers.seal_audit",
            "schedule": settings.audit_seal_interval_seconds,
            "options": {"expires": settings.audit_seal_interval_seconds},
        },
        "anchor-audit-trail": {
            "task": "offers.anchor_audit",
            "schedule": settings.audit_anchor_interval_seconds,
            "options": {"expires": settings.audit_anchor_interval_seconds},
        },
        "verify-audit-trail": {
            "task": "offers.verify_audit",
            "schedule": settings.audit_verify_interval_seconds,
            "options": {"expires": settings.audit_verify_interval_seconds},
        },
        "expire-offers-past-maker-sla": {
            "task": "offers.expire_offers",
            "schedule": settings.sla_check_interval_seconds,
            "options": {"expires": settings.sla_check_interval_seconds},
        },
        "synthetic-journey": {
            "task": "offers.synthetic_journey",
            "schedule": _crontab(settings.synthetic_cron, "OFFERS_SYNTHETIC_CRON"),
        },
        "export-audit-trail": {
            "task": "offers.export_audit",
            "schedule": audit_export_schedule(settings),
        },
        "reconcile-holds-with-stripe": {
            "task": "offers.reconcile_holds",
            "schedule": settings.reconcile_interval_seconds,
            "options": {"expires": settings.reconcile_interval_seconds},
        },
        "trim-draft-validations": {
            "task": "offers.trim_draft_validations",
            "schedule": DRAFT_TRIM_INTERVAL_S,
            "options": {"expires": DRAFT_TRIM_INTERVAL_S},
        },
        "release-expiring-holds": {
            "task": "offers.release_expiring_holds",
            "schedule": settings.hold_watch_interval_seconds,
            "options": {"expires": settings.hold_watch_interval_seconds},
        },
    }
