"""The saga's stages as plain functions: load the offer, do the stage's work, commit the outcome.

Each stage returns the messages to send next (``Dispatch``); the task glue sends them only after
the stage's transaction has committed. A stage that finds its offer already moved on changes
nothing: if the offer sits in the state this stage produces, it hands on again (the previous run
may have died between commit and send); otherwise another delivery already did the work.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from offers_workers.domain import states
from offers_workers.domain.errors import OfferRejected, PermanentError
from offers_workers.domain.states import Stage
from offers_workers.domain.validation import check_offer
from offers_workers.runtime import Runtime
from offers_workers.store import audit_trail, offers, outbox

log = logging.getLogger(__name__)

PUBLISH_EVENT_TASK = "offers.publish_event"
RELEASE_HOLD_TASK = "offers.release_hold"


@dataclass(frozen=True)
class Dispatch:
    """A task to send once the current transaction has committed."""

    task: str
    kwargs: dict[str, Any]


@dataclass
class Advance:
    """The stage succeeded: move the offer on to the stage's next state."""

    fields: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    #: A hold placed by this stage, recorded even if the offer moved meanwhile (so it is released).
    payment_intent_id: str | None = None
    #: An event this stage has already published, kept in the outbox as published.
    published: tuple[dict[str, Any], str] | None = None


@dataclass
class Reject:
    """A business outcome: the offer ends ``rejected`` with ``reason``."""

    reason: str
    fields: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)


Outcome = Advance | Reject


def hand_on(offer_id: str, state: str) -> list[Dispatch]:
    stage = states.next_stage(state)
    return [Dispatch(stage.task, {"offer_id": offer_id})] if stage else []


def run_stage(
    rt: Runtime, stage: Stage, offer_id: str, work: Callable[..., Outcome], *, local: bool = False
) -> list[Dispatch]:
    """Load, work, commit. A stage that calls a partner (``local=False``) holds no transaction
    while it waits: ``work(offer)``. A ``local`` stage does all three in one transaction, saving a
    round trip set: ``work(offer, conn)`` reads through that transaction's connection."""
    if local:
        with rt.db.transaction() as conn:
            offer = offers.load_offer(conn, offer_id)
            # Never a second pooled connection while this one is held: with OFFERS_DB_POOL_SIZE=1 it would never come.
            outcome = _work(stage, offer_id, offer, lambda o: work(o, conn))
            return outcome if isinstance(outcome, list) else _commit(conn, stage, offer_id, outcome)
    with rt.db.read() as conn:
        offer = offers.load_offer(conn, offer_id)
    outcome = _work(stage, offer_id, offer, work)
    if isinstance(outcome, list):
        return outcome
    with rt.db.transaction() as conn:
        return _commit(conn, stage, offer_id, outcome)


def _work(
    stage: Stage, offer_id: str, offer: offers.Offer | None, work: Callable[[offers.Offer], Outcome]
) -> Outcome | list[Dispatch]:
    """The stage's outcome, or the messages to send when the offer is not there to work on."""
    if offer is None:
        log.warning("no such offer; nothing to do", extra={"offer_id": offer_id, "stage": stage.name})
        return []
    if offer.state != stage.from_state:
        return hand_on(offer_id, offer.state) if offer.state == stage.to_state else []
    try:
        return work(offer)
    except OfferRejected as rejected:
        return Reject(rejected.reason, data={"detail": rejected.detail} if rejected.detail else {})


def _commit(conn: psycopg.Connection, stage: Stage, offer_id: str, outcome: Outcome) -> list[Dispatch]:
    if isinstance(outcome, Advance):
        if outcome.payment_intent_id:
            offers.record_hold(conn, offer_id, outcome.payment_intent_id)
        if outcome.published:
            outbox.add_event(conn, outcome.published[0], outcome.published[1], published=True)
        if offers.transition(
            conn, offer_id, stage.from_state, stage.to_state, actor=stage.task, fields=outcome.fields, data=outcome.data
        ):
            return hand_on(offer_id, stage.to_state)
    elif offers.transition(
        conn,
        offer_id,
        stage.from_state,
        states.REJECTED,
        actor=stage.task,
        reason=outcome.reason,
        fields=outcome.fields,
        data=outcome.data,
    ):
        log.info("offer rejected", extra={"offer_id": offer_id, "stage": stage.name, "reason": outcome.reason})
        return after_outcome(conn, offer_id, "offer.rejected")
    # Someone else moved the offer while this stage worked (a duplicate delivery, a cancel).
    return compensate_if_ended(conn, offer_id)


def after_outcome(conn: psycopg.Connection, offer_id: str, detail_type: str) -> list[Dispatch]:
    """An offer just ended: queue its event in the outbox and release any hold it has."""
    offer = offers.load_offer(conn, offer_id)
    assert offer is not None
    detail = outbox.build_event(offer, detail_type, state=offer.state, reason=offer.reason)
    outbox.add_event(conn, detail, detail_type, published=False)
    dispatches = [Dispatch(PUBLISH_EVENT_TASK, {"event_id": detail["event_id"]})]
    if offer.hold_status == "held":
        dispatches.append(Dispatch(RELEASE_HOLD_TASK, {"offer_id": offer_id}))
    return dispatches


def compensate_if_ended(conn: psycopg.Connection, offer_id: str) -> list[Dispatch]:
    offer = offers.load_offer(conn, offer_id)
    if offer is not None and offer.state in states.TERMINAL and offer.hold_status == "held":
        return [Dispatch(RELEASE_HOLD_TASK, {"offer_id": offer_id})]
    return []


# --- the stages -------------------------------------------------------------------------------


def validate(rt: Runtime, offer_id: str) -> list[Dispatch]:
    def work(offer: offers.Offer, conn: psycopg.Connection) -> Outcome:
        found = rt.policies.lookup(conn, offer.payload.listing_id)
        problems = check_offer(offer.payload, found)
        if problems:
            return Reject(problems[0].code, data={"errors": [p.model_dump() for p in problems]})
        return Advance()

    return run_stage(rt, states.STAGE_BY_NAME["validation"], offer_id, work, local=True)


def hold_payment(rt: Runtime, offer_id: str) -> list[Dispatch]:
    def work(offer: offers.Offer) -> Outcome:
        p = offer.payload
        if p.payment.method == "card":
            hold = rt.stripe.place_hold(
                offer_id=p.offer_id,
                amount_cents=p.amount_cents,
                currency=p.currency,
                payment_method_id=p.payment.payment_method_id,
                metadata={"offer_id": p.offer_id, "listing_id": p.listing_id, "buyer_id": p.buyer_id},
            )
            return Advance(payment_intent_id=hold.payment_intent_id, data={"payment_intent_id": hold.payment_intent_id})
        # Bank debits have no authorization to hold: a verified balance stands for the hold.
        balance = rt.plaid.balance(access_token=p.payment.plaid_access_token, account_id=p.payment.plaid_account_id)
        if balance.available_cents < p.amount_cents:
            return Reject("insufficient_funds", data={"funds_verified": False})
        return Advance(data={"funds_verified": True})

    return run_stage(rt, states.STAGE_BY_NAME["payment"], offer_id, work)


def score_risk(rt: Runtime, offer_id: str) -> list[Dispatch]:
    settings = rt.settings

    def work(offer: offers.Offer) -> Outcome:
        p = offer.payload
        score = rt.sift.score_order(
            offer_id=p.offer_id,
            buyer_id=p.buyer_id,
            amount_cents=p.amount_cents,
            currency=p.currency,
            email=p.buyer_context.email,
            ip=p.buyer_context.ip,
            session_id=p.buyer_context.session_id,
            payment_method=p.payment.method,
        ).score
        return_risk = None
        if p.payment.method == "bank_account":
            return_risk = rt.plaid.return_risk(
                offer_id=p.offer_id,
                access_token=p.payment.plaid_access_token,
                account_id=p.payment.plaid_account_id,
                amount_cents=p.amount_cents,
            ).score
        scores = {"risk_score": score, "return_risk_score": return_risk}
        blocked = score >= settings.risk_block_threshold or (
            return_risk is not None and return_risk >= settings.return_risk_block_threshold
        )
        return Reject("risk_blocked", fields=scores, data=scores) if blocked else Advance(fields=scores, data=scores)

    return run_stage(rt, states.STAGE_BY_NAME["risk"], offer_id, work)


def trigger_auction(rt: Runtime, offer_id: str) -> list[Dispatch]:
    def work(offer: offers.Offer) -> Outcome:
        detail = outbox.build_event(offer, "offer.submitted", state=states.SUBMITTED, reason=None)
        rt.events.publish(
            event_id=detail["event_id"],
            detail_type="offer.submitted",
            detail=detail,
            sns_topic_arn=rt.settings.sns_submitted_topic_arn,
        )
        return Advance(published=(detail, "offer.submitted"), data={"event_id": detail["event_id"]})

    return run_stage(rt, states.STAGE_BY_NAME["auction"], offer_id, work)


def complete(rt: Runtime, offer_id: str) -> list[Dispatch]:
    """The audit stage: the offer's trail must show every step before it is called submitted."""

    def work(offer: offers.Offer) -> Outcome:
        with rt.db.read() as conn:
            reached = [e["to_state"] for e in audit_trail.offer_trail(conn, offer_id) if e["kind"] == "transition"]
        expected = list(states.HAPPY_PATH[:-1])
        # Each step reached, in order; a replayed offer passes some states twice, which is fine.
        firsts = [reached.index(s) for s in expected if s in reached]
        if len(firsts) != len(expected) or firsts != sorted(firsts):
            raise PermanentError("audit", "incomplete_trail", f"audit trail shows {reached}, expected {expected}")
        return Advance()

    return run_stage(rt, states.STAGE_BY_NAME["audit"], offer_id, work)


# --- follow-ups ---------------------------------------------------------------------------------


def publish_event(rt: Runtime, event_id: str) -> None:
    """Publish one outbox event to EventBridge (and SNS for submitted/cancelled); at least once."""
    with rt.db.read() as conn:
        event = outbox.load_event(conn, event_id)
    if event is None or event["published_at"] is not None:
        return
    topic = {
        "offer.submitted": rt.settings.sns_submitted_topic_arn,
        "offer.cancelled": rt.settings.sns_cancelled_topic_arn,
    }.get(event["detail_type"])
    rt.events.publish(event_id=event_id, detail_type=event["detail_type"], detail=event["detail"], sns_topic_arn=topic)
    with rt.db.transaction() as conn:
        outbox.mark_published(conn, event_id)


def release_hold(rt: Runtime, offer_id: str, *, why: str = "offer_ended", actor: str = RELEASE_HOLD_TASK) -> str | None:
    """Cancel the offer's PaymentIntent (stable idempotency key) and record it; None if no hold."""
    with rt.db.read() as conn:
        offer = offers.load_offer(conn, offer_id)
    if offer is None or offer.hold_status != "held" or not offer.payment_intent_id:
        return None
    status = rt.stripe.release_hold(offer_id=offer_id, payment_intent_id=offer.payment_intent_id)
    with rt.db.transaction() as conn:
        if offers.mark_hold_released(conn, offer_id):
            audit_trail.record_audit(
                conn,
                offer_id,
                "hold_released",
                actor=actor,
                reason=why,
                data={"payment_intent_id": offer.payment_intent_id, "stripe_status": status},
            )
    log.info("hold released", extra={"offer_id": offer_id, "payment_intent_id": offer.payment_intent_id})
    return status
