"""Intake: turn one ``offers.submit`` message into a durable record.

Every message ends as either an offer row (``received``) or an intake-rejection row holding the
truncated raw body and field-level errors. ``offer_id`` is the idempotency key: the same body again
is processed once; the same id with another body is a ``duplicate_conflict`` and leaves the first
offer untouched.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from offers_workers.domain import states
from offers_workers.domain.payload import (
    RAW_BODY_KEEP_BYTES,
    FieldError,
    PayloadRejected,
    body_sha256,
    canonical_json,
    parse_offer,
)
from offers_workers.runtime import Runtime
from offers_workers.saga import cancellation
from offers_workers.saga.stages import Dispatch, hand_on
from offers_workers.store import audit_trail, intake_rejections, offers, policy

log = logging.getLogger(__name__)

ACTOR = "offers.submit"
OFFER_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


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


def _raw_text(raw: Any) -> tuple[str, int]:
    try:
        text = canonical_json(raw)
    except (TypeError, ValueError, RecursionError):
        text = repr(raw)
    encoded = text.encode("utf-8", errors="replace")
    # Keep whole characters only; Postgres text refuses NUL, so it is escaped.
    kept = encoded[:RAW_BODY_KEEP_BYTES].decode("utf-8", errors="ignore").replace("\x00", "\\u0000")
    return kept, len(encoded)


def _claimed_offer_id(raw: Any) -> str | None:
    claimed = raw.get("offer_id") if isinstance(raw, dict) else None
    return claimed if isinstance(claimed, str) and OFFER_ID.fullmatch(claimed) else None


def submit(
    rt: Runtime, raw: Any, *, task_id: str | None = None, unexpected: dict[str, Any] | None = None
) -> IntakeResult:
    """Record one submitted message; returns what happened and the stage to send next."""
    try:
        if unexpected:
            raise PayloadRejected(
                [
                    FieldError(field=k, code="unexpected_argument", message="offers.submit takes only 'offer'")
                    for k in sorted(unexpected)
                ]
            )
        if raw is None:
            raise PayloadRejected(
                [FieldError(field="offer", code="missing", message="the 'offer' argument is required")]
            )
        offer = parse_offer(raw)
    except PayloadRejected as rejected:
        return _reject(rt, raw, "invalid_payload", rejected.errors, task_id=task_id, offer_id=_claimed_offer_id(raw))

    gate = _admission(rt, offer.offer_id, offer.maker_id, synthetic=offer.synthetic)
    if gate is not None:
        if gate.wait_s:
            return IntakeResult("throttled", offer.offer_id, [], wait_s=gate.wait_s)
        return _reject(rt, raw, "submission_disabled", [gate.error], task_id=task_id, offer_id=offer.offer_id)

    with rt.db.transaction() as conn:
        offers.lock_offer_id(conn, offer.offer_id)  # a cancel for this id waits, or went first
        if offers.insert_offer(conn, offer, raw, actor=ACTOR):
            log.info("offer received", extra={"offer_id": offer.offer_id, "stage": "intake"})
            cancelled = cancellation.apply_tombstone(conn, offer.offer_id)
            if cancelled is not None:
                return IntakeResult("cancelled", offer.offer_id, cancelled)
            return IntakeResult("accepted", offer.offer_id, hand_on(offer.offer_id, states.RECEIVED))
        existing = offers.submitted(conn, offer.offer_id)
        if existing is not None and existing.body_sha256 == body_sha256(raw):
            audit_trail.record_audit(conn, offer.offer_id, "duplicate_ignored", actor=ACTOR, data={"task_id": task_id})
            log.info("duplicate submit ignored", extra={"offer_id": offer.offer_id, "stage": "intake"})
            # A redelivery after a crash between commit and send must still hand the offer on.
            dispatches = hand_on(offer.offer_id, states.RECEIVED) if existing.state == states.RECEIVED else []
            return IntakeResult("duplicate", offer.offer_id, dispatches)
    error = FieldError(
        field="offer_id",
        code="duplicate_conflict",
        message="an offer with this id was already submitted with a different body",
    )
    return _reject(rt, raw, "duplicate_conflict", [error], task_id=task_id, offer_id=offer.offer_id)


def record_unreadable(
    rt: Runtime, *, queue: str, problem: str, detail: str, raw: str, raw_size: int, task_id: str | None
) -> int:
    """Record a message the workers could not read at all (an envelope that is not JSON, a body
    that does not decode, no or an unknown task name): the raw text, what was wrong, where."""
    kept = (
        raw.encode("utf-8", errors="replace")[:RAW_BODY_KEEP_BYTES]
        .decode("utf-8", errors="ignore")
        .replace("\x00", "\\u0000")
    )
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


@dataclass(frozen=True)
class _Gate:
    wait_s: float = 0.0
    error: FieldError | None = None


def _admission(rt: Runtime, offer_id: str, maker_id: str, *, synthetic: bool = False) -> _Gate | None:
    """The runbook's flags at the door: None admits the offer."""
    flags = rt.flags
    submission_on, soft_launch = flags.enabled("OFFER_SUBMISSION_ENABLED"), flags.enabled("SOFT_LAUNCH_MODE")
    if submission_on and not soft_launch:
        return None
    with rt.db.transaction() as conn:
        # A redelivery of an offer already taken in is not a new submit: let it through as a duplicate.
        if offers.exists(conn, offer_id):
            return None
    if not submission_on:
        return _Gate(
            error=FieldError(field="offer", code="submission_disabled", message="offer submission is switched off")
        )
    admission = rt.soft_launch.admit(maker_id)
    if admission.refused and synthetic and _synthetic_maker(rt, maker_id):
        # The synthetic journey is a probe, and a soft launch (a staged launch, or the runbook's
        # answer to a partner outage) is when on-call most needs to know the pipeline works: a
        # journey failing "not admitted" every night of a launch would teach them to ignore it.
        # So its own maker is admitted, at the same rate as everyone. Only a maker marked synthetic
        # in Postgres (made by the journey; a policy file cannot mark one) and only offers marked
        # synthetic, which can only be for that maker's listings (validation refuses a maker
        # mismatch): no real traffic gets past the allow-list this way. A journey pointed at a
        # real maker meets the allow-list like anyone, and fails at once with intake's reason.
        admission = rt.soft_launch.admit(maker_id, exempt=True)
    if admission.refused:
        return _Gate(
            error=FieldError(
                field="maker_id", code="submission_disabled", message="soft launch: this maker is not admitted yet"
            )
        )
    return None if admission.admitted else _Gate(wait_s=admission.wait_s)


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
