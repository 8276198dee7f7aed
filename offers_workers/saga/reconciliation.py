"""Reconciliation with Stripe as the record of holds (``holds reconcile``, the beat's
``offers.reconcile_holds``).

A hold the fleet lost track of is a pending charge on a buyer's card: a worker killed between
Stripe's answer and our commit, for an offer cancelled or rejected meanwhile, leaves one that
nothing else knows about. This pages through the uncaptured PaymentIntents the fleet created
(metadata ``offer_id``), newest first, and matches each with its offer: a hold whose offer ended,
that is not the offer's own, or whose offer does not exist is released with an audit row; amounts
and currencies that differ are flagged. Then every offer that says ``held`` is checked the other
way: Stripe saying canceled, or knowing no such intent, is flagged. Flags wait for an operator;
nothing this job is unsure about is released, and a Stripe error stops the run (retried later).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

from offers_workers.domain import states
from offers_workers.domain.errors import PartnerError, TransientError
from offers_workers.partners.interfaces import Hold
from offers_workers.runtime import Runtime
from offers_workers.saga import stages
from offers_workers.store import audit_trail, hold_findings, offers

log = logging.getLogger(__name__)

ACTOR = "offers.reconcile_holds"
#: A hold Stripe has and nothing of ours needs: released (recorded resolved).
RELEASED = "released"
#: Flagged for an operator, never touched.
HELD_NOT_AT_STRIPE = "held_not_at_stripe"
AMOUNT_MISMATCH = "amount_mismatch"
CURRENCY_MISMATCH = "currency_mismatch"
RELEASE_REFUSED = "release_refused"
FLAGS = (HELD_NOT_AT_STRIPE, AMOUNT_MISMATCH, CURRENCY_MISMATCH, RELEASE_REFUSED)


@dataclass(frozen=True)
class Verdict:
    action: Literal["keep", "release", "flag"]
    kind: str | None = None
    why: str = ""


def judge(hold: Hold, offer: offers.Offer | None) -> Verdict:
    """What to do with one uncaptured hold, given the offer its metadata names."""
    if offer is None:
        return Verdict("release", RELEASED, "no such offer")
    if offer.payment_intent_id and offer.payment_intent_id != hold.payment_intent_id:
        return Verdict("release", RELEASED, f"a second hold: the offer holds {offer.payment_intent_id}")
    if offer.state in states.TERMINAL:
        return Verdict("release", RELEASED, f"offer {offer.state}")
    if hold.amount_cents != offer.payload.amount_cents:
        return Verdict(
            "flag", AMOUNT_MISMATCH, f"Stripe holds {hold.amount_cents}, the offer is {offer.payload.amount_cents}"
        )
    if hold.currency.lower() != offer.payload.currency.lower():
        return Verdict(
            "flag", CURRENCY_MISMATCH, f"Stripe holds {hold.currency}, the offer is {offer.payload.currency}"
        )
    # An open offer without the intent recorded is a stage about to commit or retry (its
    # idempotency key gives it this same intent back); a dead-lettered one may be replayed.
    return Verdict("keep")


class Interrupted(TransientError):
    """Stripe stopped answering mid-run; ``cursor``: the last intent judged, to resume after."""

    def __init__(self, cause: PartnerError, cursor: str | None) -> None:
        super().__init__(cause.partner, cause.code, cause.message, cause.http_status)
        self.cursor = cursor


@dataclass(frozen=True)
class Finding:
    kind: str
    offer_id: str | None
    payment_intent_id: str
    why: str


@dataclass
class Reconciliation:
    dry_run: bool
    #: Uncaptured holds of ours looked at, and offers that say held checked the other way.
    holds_checked: int = 0
    offers_checked: int = 0
    #: Holds younger than the grace period, left to the stage that placed them.
    too_young: int = 0
    #: The last intent judged: ``--after`` it resumes an interrupted run.
    cursor: str | None = None
    released: list[Finding] = field(default_factory=list)
    flagged: list[Finding] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for finding in self.released + self.flagged:
            found[finding.kind] = found.get(finding.kind, 0) + 1
        return found


def reconcile(
    rt: Runtime,
    *,
    since: timedelta | None = None,
    after: str | None = None,
    dry_run: bool = False,
    grace_s: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> Reconciliation:
    """One pass over Stripe's uncaptured holds created within ``since`` (all without), from the
    cursor ``after`` (newest first), then over our offers that say held. ``dry_run`` reports what it
    would do and changes nothing. A Stripe error stops it as ``Interrupted``, with where to resume."""
    result = Reconciliation(dry_run)
    try:
        return _reconcile(rt, result, since=since, after=after, grace_s=grace_s, progress=progress)
    except TransientError as exc:
        raise Interrupted(exc, result.cursor) from exc


def _reconcile(
    rt: Runtime,
    result: Reconciliation,
    *,
    since: timedelta | None,
    after: str | None,
    grace_s: float | None,
    progress: Callable[[int], None] | None,
) -> Reconciliation:
    dry_run = result.dry_run
    grace = rt.settings.reconcile_grace_seconds if grace_s is None else grace_s
    now = time.time()
    oldest = now - since.total_seconds() if since else None
    at_stripe: set[str] = set()
    for hold in rt.stripe.list_holds(status="requires_capture", after=after):
        if oldest is not None and hold.created is not None and hold.created < oldest:
            break  # newest first: the rest are older still
        if hold.offer_id is None:
            continue  # not the fleet's
        at_stripe.add(hold.payment_intent_id)
        result.holds_checked += 1
        if progress:
            progress(result.holds_checked)
        if hold.created is not None and now - hold.created < grace:
            result.too_young += 1
            continue
        with rt.db.read() as conn:
            offer = offers.load_offer(conn, hold.offer_id)
        verdict = judge(hold, offer)
        if verdict.action == "release":
            _release(rt, hold, offer, verdict, result)
        elif verdict.action == "flag" and verdict.kind:
            _flag(rt, result, Finding(verdict.kind, hold.offer_id, hold.payment_intent_id, verdict.why))
        result.cursor = hold.payment_intent_id

    with rt.db.read() as conn:
        held = offers.held_offers(conn, since.total_seconds() if since else None)
    for one in held:
        if one.payment_intent_id in at_stripe:
            continue
        result.offers_checked += 1
        status = _stripe_status(rt, one.payment_intent_id)
        with rt.db.read() as conn:
            still = offers.load_offer(conn, one.offer_id)
        if status != "requires_capture" and still is not None and still.hold_status == "held":
            why = "Stripe has no such intent" if status is None else f"Stripe says {status}"
            _flag(rt, result, Finding(HELD_NOT_AT_STRIPE, one.offer_id, one.payment_intent_id, why))

    if not dry_run:
        checked = sorted(at_stripe | {h.payment_intent_id for h in held})
        with rt.db.transaction() as conn:
            hold_findings.resolve_cleared(conn, list(FLAGS), checked, [f.payment_intent_id for f in result.flagged])
    log.info(
        "holds reconciled",
        extra={
            "dry_run": dry_run,
            "holds_checked": result.holds_checked,
            "offers_checked": result.offers_checked,
            **result.counts(),
        },
    )
    return result


def _release(rt: Runtime, hold: Hold, offer: offers.Offer | None, verdict: Verdict, result: Reconciliation) -> None:
    finding = Finding(RELEASED, hold.offer_id, hold.payment_intent_id, verdict.why)
    if result.dry_run:
        result.released.append(finding)
        return
    try:
        if offer is not None and offer.payment_intent_id == hold.payment_intent_id and offer.hold_status == "held":
            # The offer's own hold, its release lost: the usual path records it on the offer too.
            status = stages.release_hold(rt, offer.offer_id, why=f"reconciliation: {verdict.why}", actor=ACTOR)
        else:
            status = rt.stripe.release_hold(offer_id=hold.offer_id or "", payment_intent_id=hold.payment_intent_id)
    except TransientError:
        raise  # Stripe is unwell: stop here, the next run takes it up again
    except PartnerError as refused:
        _flag(rt, result, Finding(RELEASE_REFUSED, hold.offer_id, hold.payment_intent_id, str(refused)[:300]))
        return
    with rt.db.transaction() as conn:
        hold_findings.record(
            conn,
            RELEASED,
            offer_id=hold.offer_id,
            payment_intent_id=hold.payment_intent_id,
            detail={"why": verdict.why, "amount_cents": hold.amount_cents, "currency": hold.currency},
            resolved=True,
        )
        if not (offer is not None and offer.payment_intent_id == hold.payment_intent_id):
            audit_trail.record_audit(
                conn,
                hold.offer_id,
                "hold_released",
                actor=ACTOR,
                reason=f"reconciliation: {verdict.why}",
                data={"payment_intent_id": hold.payment_intent_id, "stripe_status": status},
            )
    log.warning(
        "orphan hold released",
        extra={"offer_id": hold.offer_id, "payment_intent_id": hold.payment_intent_id, "why": verdict.why},
    )
    result.released.append(finding)


def _flag(rt: Runtime, result: Reconciliation, finding: Finding) -> None:
    result.flagged.append(finding)
    if result.dry_run:
        return
    with rt.db.transaction() as conn:
        new = hold_findings.record(
            conn,
            finding.kind,
            offer_id=finding.offer_id,
            payment_intent_id=finding.payment_intent_id,
            detail={"why": finding.why},
            resolved=False,
        )
    if new:
        log.warning(
            "hold mismatch flagged",
            extra={"offer_id": finding.offer_id, "payment_intent_id": finding.payment_intent_id, "kind": finding.kind},
        )


def _stripe_status(rt: Runtime, payment_intent_id: str) -> str | None:
    """The intent's status at Stripe; None if Stripe has no such intent."""
    try:
        return rt.stripe.get_hold(payment_intent_id).status
    except TransientError:
        raise
    except PartnerError as exc:
        if exc.code == "resource_missing":
            return None
        raise
