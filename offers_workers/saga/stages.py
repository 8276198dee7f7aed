"""The saga's stages as plain functions: load the offer, do the stage's work, commit the outcome.

Each stage returns the messages to send next (``Dispatch``); the task glue sends them only after
the stage's transaction has committed. A stage that finds its offer already moved on changes
nothing: if the offer sits in the state this stage produces, it hands on again (the previous run
may have died between commit and send); otherwise another delivery already did the work.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import psycopg

from offers_workers import tracing
from offers_workers.domain import states
from offers_workers.domain.errors import OfferRejected
from offers_workers.domain.events import EventDetail
from offers_workers.domain.payload import BankAccountPayment, CardPayment, OfferPayload
from offers_workers.domain.states import Stage
from offers_workers.partners.interfaces import OrderToScore
from offers_workers.runtime import Runtime
from offers_workers.saga import decisions, funnel
from offers_workers.saga.decisions import (
    PUBLISH_EVENT_TASK,
    RELEASE_HOLD_TASK,
    Advance,
    Arrival,
    Dispatch,
    Outcome,
    Reject,
    hand_on,
)
from offers_workers.store import audit_trail, offers, outbox
from offers_workers.store.db import Connection

if TYPE_CHECKING:
    from offers_workers.partners.interfaces import AuctionEvents, BankFunds, Payments, RiskScoring

__all__ = ["PUBLISH_EVENT_TASK", "RELEASE_HOLD_TASK", "Advance", "Outcome", "Reject", "hand_on"]

log = logging.getLogger(__name__)


def run_stage(
    rt: Runtime,
    stage: Stage,
    offer_id: str,
    work: Callable[..., Outcome],
    *,
    local: bool = False,
    load: Callable[[Connection, str], offers.Offer | None] = offers.load_offer,
) -> list[Dispatch]:
    """Load, work, commit. ``load`` reads the offer in autocommit (a write there commits before
    the work starts). A stage that calls a partner (``local=False``) holds no connection while it
    waits: ``work(offer)``. A ``local`` stage keeps one connection for all three, saving a checkout:
    ``work(offer, conn)`` reads through it.

    The outcome is committed as one statement when it is an advance that records nothing beside it
    (the guarded transition and its audit row), else in a transaction: one round trip, not three.
    """
    if local:
        with rt.db.autocommit() as conn:
            offer = load(conn, offer_id)
            # Never a second pooled connection while this one is held: a prefork child has one (OFFERS_DB_POOL_SIZE_PREFORK).
            outcome = _work(stage, offer_id, offer, lambda o: work(o, conn))
            if isinstance(outcome, list):
                return outcome
            dispatches, moved = _commit_on(conn, stage, offer_id, outcome)
    else:
        with rt.db.read() as conn:
            offer = load(conn, offer_id)
        outcome = _work(stage, offer_id, offer, work)
        if isinstance(outcome, list):
            return outcome
        with rt.db.autocommit() as conn:
            dispatches, moved = _commit_on(conn, stage, offer_id, outcome)
    if moved and offer is not None:  # committed: the funnel hears of it now
        funnel.send(rt, funnel.after_stage(stage.name, offer.payload, outcome))
    return dispatches


def _commit_on(conn: Connection, stage: Stage, offer_id: str, outcome: Outcome) -> tuple[list[Dispatch], bool]:
    """``_commit`` on a connection in autocommit: as one statement where it is one, else in a transaction."""
    if isinstance(outcome, Advance) and not outcome.payment_intent_id and not outcome.published:
        return _commit(conn, stage, offer_id, outcome)
    with conn.transaction():
        return _commit(conn, stage, offer_id, outcome)


def _work(
    stage: Stage, offer_id: str, offer: offers.Offer | None, work: Callable[[offers.Offer], Outcome]
) -> Outcome | list[Dispatch]:
    """The stage's outcome, or the messages to send when the offer is not there to work on."""
    if offer is None:
        log.warning("no such offer; nothing to do", extra={"offer_id": offer_id, "stage": stage.name})
        return []
    arrival = decisions.on_arrival(stage, offer.state)
    if arrival is not Arrival.WORK:
        return hand_on(offer_id, offer.state) if arrival is Arrival.HAND_ON else []
    try:
        return work(offer)
    except OfferRejected as refused:
        return decisions.rejected(refused)


def _commit(conn: psycopg.Connection, stage: Stage, offer_id: str, outcome: Outcome) -> tuple[list[Dispatch], bool]:
    """The messages to send next, and whether this run moved the offer (False: someone else did)."""
    if isinstance(outcome, Advance):
        if outcome.payment_intent_id:
            offers.record_hold(conn, offer_id, outcome.payment_intent_id)
        if outcome.published:
            detail, detail_type = outcome.published
            outbox.add_event(
                conn,
                detail,
                detail_type,
                published=True,
                bus_event_id=outcome.bus_event_id,
                sns_message_id=outcome.sns_message_id,
            )
        if offers.transition(
            conn, offer_id, stage.from_state, stage.to_state, actor=stage.task, fields=outcome.fields, data=outcome.data
        ):
            tracing.annotate(outcome=stage.to_state)
            return hand_on(offer_id, stage.to_state), True
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
        tracing.annotate(outcome=states.REJECTED, reason=outcome.reason)
        return after_outcome(conn, offer_id, "offer.rejected"), True
    # Someone else moved the offer while this stage worked (a duplicate delivery, a cancel).
    return compensate_if_ended(conn, offer_id), False


def after_outcome(conn: psycopg.Connection, offer_id: str, detail_type: str) -> list[Dispatch]:
    """An offer just ended: queue its event in the outbox and release any hold it has."""
    offer = offers.load_offer(conn, offer_id)
    assert offer is not None
    detail = outbox.build_event(offer, detail_type, state=offer.state, reason=offer.reason)
    outbox.add_event(conn, detail, detail_type, published=False)
    return decisions.on_end(offer_id, detail.event_id, offer.hold_status)


def compensate_if_ended(conn: psycopg.Connection, offer_id: str) -> list[Dispatch]:
    """Release the hold of an offer that ended while a stage worked on it (see ``decisions.on_lost_race``)."""
    offer = offers.load_offer(conn, offer_id)
    if offer is None:
        return []
    return decisions.on_lost_race(offer_id, offer.state, offer.hold_status)


# --- the stages -------------------------------------------------------------------------------


def validate(rt: Runtime, offer_id: str) -> list[Dispatch]:
    def work(offer: offers.Offer, conn: psycopg.Connection) -> Outcome:
        return decisions.decide_validation(offer.payload, rt.policies.lookup(conn, offer.payload.listing_id))

    return run_stage(rt, states.VALIDATION_STAGE, offer_id, work, local=True)


def payment_outcome(p: OfferPayload, payments: Payments, funds: BankFunds, *, first_attempt: bool = False) -> Outcome:
    """The payment stage's partner calls: a card hold, or a bank account's balance check.
    ``first_attempt``: the stage never started on this offer before, so no hold of it exists."""
    payment = p.payment
    if isinstance(payment, CardPayment):
        hold = payments.place_hold(
            offer_id=p.offer_id,
            amount_cents=p.amount_cents,
            currency=p.currency,
            payment_method_id=payment.payment_method_id,
            metadata={"offer_id": p.offer_id, "listing_id": p.listing_id, "buyer_id": p.buyer_id},
            first_attempt=first_attempt,
        )
        return decisions.card_held(hold.payment_intent_id)
    # Bank debits have no authorization to hold: a verified balance stands for the hold.
    balance = funds.balance(access_token=payment.plaid_access_token, account_id=payment.plaid_account_id)
    return decisions.funds_checked(balance.available_cents, p.amount_cents)


def hold_payment(rt: Runtime, offer_id: str) -> list[Dispatch]:
    def work(offer: offers.Offer) -> Outcome:
        # Each start is counted (committed) before Stripe is called: a run that died after placing
        # the hold left a count behind, so the next run looks the hold up.
        first = offer.payment_attempts == 1
        # The one place besides the risk stage that opens the offer's sealed Plaid token.
        payload = offer.for_partners(rt.settings.payment_keys)
        return payment_outcome(payload, rt.stripe, rt.plaid, first_attempt=first)

    return run_stage(rt, states.PAYMENT_STAGE, offer_id, work, load=offers.start_payment)


def risk_outcome(
    p: OfferPayload,
    risk: RiskScoring,
    funds: BankFunds,
    *,
    risk_block_threshold: float,
    return_risk_block_threshold: int,
) -> Outcome:
    """The risk stage's partner calls: Sift's score, and Plaid's return risk for a bank debit."""
    order = OrderToScore(
        offer_id=p.offer_id,
        buyer_id=p.buyer_id,
        amount_cents=p.amount_cents,
        currency=p.currency,
        payment_method=p.payment.method,
        email=p.buyer_context.email,
        ip=p.buyer_context.ip,
        session_id=p.buyer_context.session_id,
    )
    score = risk.score_order(order).score
    return_risk = None
    payment = p.payment
    # Only a bank debit can be returned, so only bank-account offers are scored for it.
    if isinstance(payment, BankAccountPayment):
        return_risk = funds.return_risk(
            offer_id=p.offer_id,
            access_token=payment.plaid_access_token,
            account_id=payment.plaid_account_id,
            amount_cents=p.amount_cents,
        ).score
    return decisions.decide_risk(
        score,
        return_risk,
        risk_block_threshold=risk_block_threshold,
        return_risk_block_threshold=return_risk_block_threshold,
    )


def score_risk(rt: Runtime, offer_id: str) -> list[Dispatch]:
    settings = rt.settings

    def work(offer: offers.Offer) -> Outcome:
        return risk_outcome(
            offer.for_partners(settings.payment_keys),
            rt.sift,
            rt.plaid,
            risk_block_threshold=settings.risk_block_threshold,
            return_risk_block_threshold=settings.return_risk_block_threshold,
        )

    return run_stage(rt, states.RISK_STAGE, offer_id, work)


def auction_outcome(detail: EventDetail, events: AuctionEvents, sns_topic_arn: str | None) -> Outcome:
    """The auction stage's partner call: publish the ``offer.submitted`` event (EventBridge, then SNS)."""
    delivery = events.publish(
        event_id=detail.event_id, detail_type="offer.submitted", detail=detail.as_json(), sns_topic_arn=sns_topic_arn
    )
    return decisions.auction_triggered(
        detail, bus_event_id=delivery.bus_event_id, sns_message_id=delivery.sns_message_id
    )


def trigger_auction(rt: Runtime, offer_id: str) -> list[Dispatch]:
    def work(offer: offers.Offer) -> Outcome:
        detail = outbox.build_event(offer, "offer.submitted", state=states.SUBMITTED, reason=None)
        return auction_outcome(detail, rt.events, rt.settings.sns_submitted_topic_arn)

    return run_stage(rt, states.AUCTION_STAGE, offer_id, work)


def complete(rt: Runtime, offer_id: str) -> list[Dispatch]:
    """The audit stage: the offer's trail must show every step before it is called submitted."""

    def work(offer: offers.Offer) -> Outcome:
        with rt.db.read() as conn:
            reached = audit_trail.offer_states(conn, offer_id)
        return decisions.decide_audit(reached)

    return run_stage(rt, states.AUDIT_STAGE, offer_id, work)


# --- follow-ups ---------------------------------------------------------------------------------


def publish_event(rt: Runtime, event_id: str) -> None:
    """Publish one outbox event to EventBridge (and SNS for submitted/cancelled); at least once."""
    with rt.db.read() as conn:
        event = outbox.load_event(conn, event_id)
    if event is None or event.published_at is not None:
        return
    topic = {
        "offer.submitted": rt.settings.sns_submitted_topic_arn,
        "offer.cancelled": rt.settings.sns_cancelled_topic_arn,
    }.get(event.detail_type)
    delivery = rt.events.publish(
        event_id=event_id, detail_type=event.detail_type, detail=event.detail, sns_topic_arn=topic
    )
    with rt.db.transaction() as conn:
        outbox.mark_published(
            conn, event_id, bus_event_id=delivery.bus_event_id, sns_message_id=delivery.sns_message_id
        )


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
