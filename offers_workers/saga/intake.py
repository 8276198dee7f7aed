"""Intake: turn one ``offers.submit`` message into a durable record.

Every message ends as either an offer row (``received``) or an intake-rejection row holding the
truncated raw body and field-level errors. ``offer_id`` is the idempotency key: the same body again
is processed once; the same id with another body is a ``duplicate_conflict`` and leaves the first
offer untouched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from offers_workers import tracing
from offers_workers.domain import secrets, states
from offers_workers.domain.authority import UNAUTHENTICATED
from offers_workers.domain.payload import (
    OFFER_ID,
    RAW_BODY_KEEP_BYTES,
    FieldError,
    OfferPayload,
    PayloadRejected,
    body_sha256,
    canonical_json,
    parse_offer,
)
from offers_workers.runtime import Runtime
from offers_workers.saga import cancellation, decisions, funnel
from offers_workers.saga.decisions import Dispatch
from offers_workers.saga.stages import hand_on
from offers_workers.store import audit_trail, intake_rejections, offers, policy

__all__ = ["ACTOR", "OFFER_ID", "IntakeResult", "record_unauthenticated", "record_unreadable", "submit"]

log = logging.getLogger(__name__)

ACTOR = "offers.submit"


@dataclass(frozen=True)
class IntakeResult:
    """``outcome``: ``accepted``, ``cancelled`` (a cancel came first), ``duplicate``,
    ``duplicate_conflict`` or ``invalid_payload``."""

    outcome: str
    offer_id: str | None
    dispatches: list[Dispatch]
    rejection_id: int | None = None
    #: ``throttled``: seconds until the soft-launch bucket admits the offer (the task retries then).
    wait_s: float = 0.0
    #: The offer this message recorded (``accepted``, ``cancelled``): what the funnel hears of.
    recorded: OfferPayload | None = None
    #: ``cancelled``: the reason of the cancel that came first.
    cancel_reason: str | None = None


def _raw_text(raw: Any) -> tuple[str, int]:
    """The body as kept (payment secrets removed, truncated) and the size it came with."""
    try:
        text, size = canonical_json(secrets.redact(raw)), len(canonical_json(raw).encode("utf-8", errors="replace"))
    except (TypeError, ValueError, RecursionError):
        text = repr(raw)
        size = len(text.encode("utf-8", errors="replace"))
        text = secrets.redact_text(text)
    return _kept(text), size


def _kept(text: str) -> str:
    # Keep whole characters only; Postgres text refuses NUL, so it is escaped.
    encoded = text.encode("utf-8", errors="replace")
    return encoded[:RAW_BODY_KEEP_BYTES].decode("utf-8", errors="ignore").replace("\x00", "\\u0000")


def submit(
    rt: Runtime,
    raw: Any,
    *,
    task_id: str | None = None,
    unexpected: dict[str, Any] | None = None,
    sender: str | None = None,
) -> IntakeResult:
    """Record one submitted message; returns what happened and the stage to send next. ``sender``:
    who signed it (``upstream:NAME``), kept on the offer's first audit row."""
    result = _record(rt, raw, task_id=task_id, unexpected=unexpected, sender=sender)
    if result.recorded is not None:  # committed: the funnel hears of it now
        funnel.send(rt, funnel.submitted(result.recorded))
        if result.outcome == "cancelled":
            funnel.send(rt, funnel.cancelled(result.recorded, result.cancel_reason))
    return result


def _record(
    rt: Runtime, raw: Any, *, task_id: str | None, unexpected: dict[str, Any] | None, sender: str | None
) -> IntakeResult:
    try:
        call_errors = decisions.submit_argument_errors(raw, unexpected or {})
        if call_errors:
            raise PayloadRejected(call_errors)
        offer = parse_offer(raw)
    except PayloadRejected as rejected:
        return _reject(
            rt, raw, "invalid_payload", rejected.errors, task_id=task_id, offer_id=decisions.claimed_offer_id(raw)
        )

    gate = _admission(rt, offer.offer_id, offer.maker_id, synthetic=offer.synthetic)
    if gate is not None:
        if gate.error is None:  # over the soft launch's rate: wait, never rejected for the rate
            return IntakeResult("throttled", offer.offer_id, [], wait_s=gate.wait_s)
        return _reject(rt, raw, "submission_disabled", [gate.error], task_id=task_id, offer_id=offer.offer_id)

    with rt.db.transaction() as conn:
        offers.lock_offer_id(conn, offer.offer_id)  # a cancel for this id waits, or went first
        signed_by = {"sender": sender} if sender else None
        if offers.insert_offer(
            conn,
            offer,
            raw,
            actor=ACTOR,
            keys=rt.settings.payment_keys,
            trace_parent=tracing.current_traceparent(),
            data=signed_by,
        ):
            log.info("offer received", extra={"offer_id": offer.offer_id, "stage": "intake"})
            tombstone = cancellation.apply_tombstone(conn, offer.offer_id)
            if tombstone is not None:
                dispatches, reason = tombstone
                return IntakeResult("cancelled", offer.offer_id, dispatches, recorded=offer, cancel_reason=reason)
            return IntakeResult("accepted", offer.offer_id, hand_on(offer.offer_id, states.RECEIVED), recorded=offer)
        existing = offers.submitted(conn, offer.offer_id)
        assert existing is not None, "insert_offer found the offer id taken, and offers are never deleted"
        resubmit = decisions.on_resubmit(
            offer.offer_id,
            stored_sha256=existing.body_sha256,
            body_sha256=body_sha256(raw),
            stored_state=existing.state,
        )
        if resubmit.outcome == "duplicate":
            audit_trail.record_audit(conn, offer.offer_id, "duplicate_ignored", actor=ACTOR, data={"task_id": task_id})
            log.info("duplicate submit ignored", extra={"offer_id": offer.offer_id, "stage": "intake"})
            return IntakeResult("duplicate", offer.offer_id, resubmit.dispatches)
    error = decisions.duplicate_conflict_error()
    return _reject(rt, raw, "duplicate_conflict", [error], task_id=task_id, offer_id=offer.offer_id)


def record_unreadable(
    rt: Runtime, *, queue: str, problem: str, detail: str, raw: str, raw_size: int, task_id: str | None
) -> int:
    """Record a message the workers could not read at all (an envelope that is not JSON, a body
    that does not decode, no or an unknown task name): the raw text, what was wrong, where."""
    # Secrets out before the cut: a token cut in half would no longer be recognised.
    kept = _kept(secrets.redact_text(raw))
    error = FieldError(field="", code=problem, message=f"{detail} (queue {queue})")
    with rt.db.transaction() as conn:
        rejection_id = intake_rejections.record(
            conn,
            reason="invalid_payload",
            errors=[error],
            raw_body=kept,
            raw_size=raw_size,
            offer_id=None,
            task_id=task_id,
        )
    log.warning("unreadable message recorded", extra={"stage": "intake", "reason": problem, "queue": queue})
    return rejection_id


def record_unauthenticated(
    rt: Runtime,
    *,
    queue: str,
    task: str,
    why: str,
    sender: str | None,
    arguments: dict[str, Any],
    task_id: str | None,
) -> int:
    """Record a message refused for want of a valid MAC: which task it asked for, why it was refused,
    and its arguments (truncated as any raw body). Nothing else happens to it."""
    kept, size = _raw_text({"task": task, **arguments})
    by = f"; signed by {sender}" if sender and sender not in why else ""
    error = FieldError(field="", code=UNAUTHENTICATED, message=f"{task} on {queue}: {why}{by}"[:500])
    with rt.db.transaction() as conn:
        rejection_id = intake_rejections.record(
            conn,
            reason=UNAUTHENTICATED,
            errors=[error],
            raw_body=kept,
            raw_size=size,
            offer_id=None,
            task_id=task_id,
        )
    log.warning(
        "unauthenticated message recorded", extra={"stage": "intake", "reason": UNAUTHENTICATED, "queue": queue}
    )
    return rejection_id


def _admission(rt: Runtime, offer_id: str, maker_id: str, *, synthetic: bool = False) -> decisions.Gate | None:
    """The runbook's flags at the door: None admits the offer."""
    flags = rt.flags
    submission_on, soft_launch = flags.enabled("OFFER_SUBMISSION_ENABLED"), flags.enabled("SOFT_LAUNCH_MODE")
    if decisions.door_open(submission_on, soft_launch):
        return None
    with rt.db.transaction() as conn:
        # A redelivery of an offer already taken in is not a new submit: let it through as a duplicate.
        if offers.exists(conn, offer_id):
            return None
    if not submission_on:
        return decisions.admission_gate(submission_on, None)
    admission = rt.soft_launch.admit(maker_id)
    if decisions.may_exempt(admission, synthetic=synthetic) and _synthetic_maker(rt, maker_id):
        # The synthetic journey is a probe, and a soft launch (a staged launch, or the runbook's
        # answer to a partner outage) is when on-call most needs to know the pipeline works: a
        # journey failing "not admitted" every night of a launch would teach them to ignore it.
        # So its own maker is admitted, at the same rate as everyone. Only a maker marked synthetic
        # in Postgres (made by the journey; a policy file cannot mark one) and only offers marked
        # synthetic, which can only be for that maker's listings (validation refuses a maker
        # mismatch): no real traffic gets past the allow-list this way. A journey pointed at a
        # real maker meets the allow-list like anyone, and fails at once with intake's reason.
        admission = rt.soft_launch.admit(maker_id, exempt=True)
    return decisions.admission_gate(submission_on, admission)


def _synthetic_maker(rt: Runtime, maker_id: str) -> bool:
    with rt.db.transaction() as conn:
        return policy.is_synthetic_maker(conn, maker_id)


def _reject(
    rt: Runtime, raw: Any, reason: str, errors: list[FieldError], *, task_id: str | None, offer_id: str | None
) -> IntakeResult:
    text, size = _raw_text(raw)
    with rt.db.transaction() as conn:
        rejection_id = intake_rejections.record(
            conn, reason=reason, errors=errors, raw_body=text, raw_size=size, offer_id=offer_id, task_id=task_id
        )
    log.warning(
        "submission rejected",
        extra={"offer_id": offer_id, "stage": "intake", "reason": reason, "errors": [e.field for e in errors][:10]},
    )
    return IntakeResult(reason, offer_id, [], rejection_id)
