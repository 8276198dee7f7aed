"""Cancellation: a buyer withdraws, a maker rejects, ops step in, or the maker's SLA lapses.

A cancel may arrive at any moment. Every request is recorded in ``cancel_requests`` with what it
did. The offer's row lock decides a race with an in-flight stage: whichever commits first wins,
and a stage that finds its offer cancelled changes nothing but releasing a hold it placed (see
``saga._commit``). A cancel for an offer not received yet leaves a tombstone that the late submit
honours, under a per-offer advisory lock so the two cannot pass each other unseen.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg

from offers_workers.domain import states
from offers_workers.runtime import Runtime
from offers_workers.saga import decisions, funnel
from offers_workers.saga.decisions import SLA_ACTOR, SLA_EXPIRED, Dispatch
from offers_workers.saga.stages import after_outcome, compensate_if_ended
from offers_workers.store import cancel_requests, dead_letters, offers

log = logging.getLogger(__name__)

#: At most this many offers are expired per tick, so a backlog drains without a flood.
SLA_BATCH = 500


@dataclass(frozen=True)
class CancelResult:
    """``outcome``: cancelled, tombstone, already_cancelled, already_rejected or invalid."""

    outcome: states.CancelOutcome
    offer_id: str | None
    dispatches: list[Dispatch]


def request_cancel(
    rt: Runtime,
    offer_id: Any,
    reason: Any,
    actor: Any,
    *,
    task_id: str | None = None,
    unexpected: dict[str, Any] | None = None,
    sender: str | None = None,
) -> CancelResult:
    """Handle one ``offers.cancel`` message: check its arguments, then cancel. ``sender``: who signed
    the message (ops, an upstream), kept on the cancelled offer's audit row."""
    errors = decisions.cancel_request_errors(offer_id, reason, actor, unexpected or {})
    if errors:
        kept = decisions.kept_cancel_arguments(offer_id, reason, actor)
        with rt.db.transaction() as conn:
            asked = cancel_requests.Asked(kept.offer_id, kept.reason, kept.actor, task_id)
            cancel_requests.record(conn, asked, "invalid", errors)
        log.warning("cancel refused", extra={"offer_id": kept.offer_id, "errors": [e.field for e in errors]})
        return CancelResult("invalid", kept.offer_id, [])
    return cancel(rt, offer_id, reason, actor, task_id=task_id, sender=sender)


def cancel(
    rt: Runtime, offer_id: str, reason: str, actor: str, *, task_id: str | None = None, sender: str | None = None
) -> CancelResult:
    asked = cancel_requests.Asked(offer_id, reason, actor, task_id)
    with rt.db.transaction() as conn:
        offers.lock_offer_id(conn, offer_id)
        offer = offers.load_offer(conn, offer_id, for_update=True)
        if offer is None:
            cancel_requests.record(conn, asked, "tombstone")
            log.warning(
                "cancel for an offer not received (yet): kept as a tombstone for a late submit",
                extra={"offer_id": offer_id, "reason": reason},
            )
            return CancelResult("tombstone", offer_id, [])
        outcome = decisions.decide_cancel(offer.state)
        if outcome != "cancelled":
            cancel_requests.record(conn, asked, outcome)
            log.info(
                "cancel of an offer that already ended; nothing to do",
                extra={"offer_id": offer_id, "state": offer.state},
            )
            return CancelResult(outcome, offer_id, compensate_if_ended(conn, offer_id))
        dispatches = _cancel_locked(conn, offer, reason, actor=actor, sender=sender)
        cancel_requests.record(conn, asked, "cancelled")
    log.info("offer cancelled", extra={"offer_id": offer_id, "reason": reason, "from_state": offer.state})
    funnel.send(rt, funnel.cancelled(offer.payload, reason))
    # The cancel came in a trace of its own (the upstream's); its event and release join the offer's.
    return CancelResult(
        "cancelled", offer_id, [decisions.traced(d, offer.trace_parent, "cancellation") for d in dispatches]
    )


def _cancel_locked(
    conn: psycopg.Connection, offer: offers.Offer, reason: str, *, actor: str, sender: str | None = None
) -> list[Dispatch]:
    """Move a locked, not yet ended offer to cancelled; its event and hold release follow."""
    signed_by = {"sender": sender} if sender else None
    moved = offers.transition(
        conn, offer.offer_id, offer.state, states.CANCELLED, actor=actor, reason=reason, data=signed_by
    )
    assert moved, "the row is locked: its state cannot have changed"
    # A dead letter of a cancelled offer has nothing left to replay.
    dead_letters.discard_for_offer(conn, offer.offer_id, resolution="offer cancelled")
    return after_outcome(conn, offer.offer_id, "offer.cancelled")


def apply_tombstone(conn: psycopg.Connection, offer_id: str) -> tuple[list[Dispatch], str] | None:
    """Called by intake right after inserting an offer (same transaction, same advisory lock):
    if a cancel came first, the offer ends cancelled at once: its messages, and the cancel's reason.
    None when there is no tombstone."""
    tomb = cancel_requests.apply_tombstone(conn, offer_id)
    if tomb is None:
        return None
    offer = offers.load_offer(conn, offer_id, for_update=True)
    assert offer is not None
    log.info("offer arrived already cancelled (tombstone)", extra={"offer_id": offer_id, "reason": tomb.reason})
    return _cancel_locked(conn, offer, tomb.reason, actor=tomb.actor), tomb.reason


def expire_overdue(rt: Runtime) -> list[Dispatch]:
    """Cancel submitted offers whose maker did not answer within the policy's SLA window."""
    with rt.db.transaction() as conn:
        due = offers.past_maker_sla(conn, SLA_BATCH)
    dispatches: list[Dispatch] = []
    for offer_id in due:
        dispatches += cancel(rt, offer_id, SLA_EXPIRED, SLA_ACTOR).dispatches
    return dispatches
