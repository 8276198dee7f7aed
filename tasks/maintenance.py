"""Periodic jobs sent by the single beat (Procfile ``beat:``), on ``offers.maintenance``."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from offers_workers.ops import export_summary, synthetic
from offers_workers.runtime import get_runtime
from offers_workers.saga import cancellation, drafts, reconciliation, recovery, trail
from offers_workers.saga.decisions import Dispatch
from tasks.app import app
from tasks.base import OffersTask, stage_task

log = logging.getLogger(__name__)


def reported(dispatches: list[Dispatch], level: int, message: str, key: str = "messages") -> list[Dispatch]:
    """A periodic job's work, logged when there was any (an idle tick says nothing)."""
    if dispatches:
        log.log(level, message, extra={key: len(dispatches)})
    return dispatches


# Thresholds come from the settings, never from the message: even a signed one cannot widen a job
# (a beat of an earlier release still sends them as arguments, which are ignored).


@stage_task("offers.recover")
def recover(self: OffersTask, **_ignored: Any) -> list[Dispatch]:
    rt = get_runtime()
    return reported(
        recovery.sweep(rt, stuck_after_s=rt.settings.recovery_after_seconds), logging.WARNING, "recovery re-sent work"
    )


@stage_task("offers.release_expiring_holds")
def release_expiring_holds(self: OffersTask, **_ignored: Any) -> list[Dispatch]:
    rt = get_runtime()
    dispatches = recovery.expiring_holds(rt, older_than_s=rt.settings.hold_release_after.total_seconds())
    return reported(dispatches, logging.WARNING, "releasing holds before their authorization lapses", key="holds")


@stage_task("offers.expire_offers")
def expire_offers(self: OffersTask) -> list[Dispatch]:
    return reported(cancellation.expire_overdue(get_runtime()), logging.INFO, "offers past their maker's SLA cancelled")


@stage_task("offers.trim_draft_validations")
def trim_draft_validations(self: OffersTask, **_ignored: Any) -> int:
    rt = get_runtime()
    deleted = drafts.trim_validations(rt, older_than_s=rt.settings.draft_validations_kept.total_seconds())
    if deleted:
        log.info("old draft validations deleted", extra={"rows": deleted})
    return deleted


@stage_task("offers.reconcile_holds")
def reconcile_holds(self: OffersTask) -> dict[str, int]:
    # A Stripe error is transient here and retried later by the base task; nothing is released
    # that the run was unsure about.
    rt = get_runtime()
    return reconciliation.reconcile(rt, since=rt.settings.reconcile_window).counts()


@stage_task("offers.seal_audit")
def seal_audit(self: OffersTask) -> int:
    # One step, no waiting: a worker child is never parked on open writers; the next run goes on.
    return trail.seal_step(get_runtime())


@stage_task("offers.anchor_audit")
def anchor_audit(self: OffersTask) -> int:
    # An S3 error is transient here: the stretch stays cut in the database and the next run writes it.
    return trail.anchor(get_runtime())


@stage_task("offers.verify_audit")
def verify_audit(self: OffersTask) -> int:
    # The outcome is recorded in audit_verifications (the alert) and each finding logged; a run
    # that fails midway records nothing, and the alert on a stale verification fires.
    found = trail.verify(get_runtime())
    for finding in found.findings[:50]:
        log.error("audit finding", extra={"finding": finding[:300]})
    return len(found.findings)


@stage_task("offers.export_audit")
def export_audit(self: OffersTask, until: str | None = None) -> None:
    # Failures are recorded on the export row and logged with its id (the alert); the next night
    # picks the window up again, so the task itself does not retry.
    rt = get_runtime()
    try:
        summary = trail.run_export(rt, datetime.fromisoformat(until) if until else None)
    except trail.ExportBusy:
        log.warning("audit export skipped: another export is running")
        return
    except trail.ExportFailed as exc:
        summary = exc.summary
    if summary is not None:
        # Never raises: an unsent summary is a warning, not a failed export.
        export_summary.report(summary, rt.settings)


@app.task(name="offers.synthetic_journey", bind=True)
def synthetic_journey(self: Any) -> dict[str, Any]:
    # Watches a whole journey (up to a few minutes, once a night) on the maintenance queue; the
    # outcome is the log line "synthetic journey passed/failed" with its timings.
    journey = synthetic.run(get_runtime(), lambda name, kwargs: self.app.send_task(name, kwargs=kwargs))
    return journey.as_dict()
