"""Recovery: a lost message, a flushed Redis or a dead worker delays an offer, never loses it.

Postgres knows where every offer stands. A periodic sweep re-sends the stage of offers that have
sat in an open state too long, publishes outbox events still unpublished, and releases holds of
offers that ended without their release being recorded. Every stage is idempotent, so re-sending
work that was merely slow costs a duplicate message, nothing more.
"""

from __future__ import annotations

from offers_workers.runtime import Runtime
from offers_workers.saga.decisions import Dispatch, traced
from offers_workers.saga.stages import PUBLISH_EVENT_TASK, RELEASE_HOLD_TASK, hand_on
from offers_workers.store import offers, outbox

#: Why a hold was released by the authorization-window job (audit trail, `holds list`).
AUTHORIZATION_WINDOW = "authorization_window"

#: At most this many offers are re-sent per sweep, so a backlog drains without a flood.
BATCH = 500


def sweep(rt: Runtime, *, stuck_after_s: float) -> list[Dispatch]:
    """Re-send the stage of stuck offers, the unpublished events and the lost hold releases."""
    with rt.db.transaction() as conn:
        stuck = offers.claim_stuck(conn, stuck_after_s, BATCH)
        events = outbox.claim_unpublished(conn, stuck_after_s, BATCH)
        holds = offers.claim_unreleased_holds(conn, stuck_after_s, BATCH)
    # Each re-send resumes its offer's own trace, not the sweep's.
    dispatches = [
        traced(d, offer.trace_parent, "recovery sweep") for offer in stuck for d in hand_on(offer.offer_id, offer.state)
    ]
    dispatches += [traced(Dispatch(PUBLISH_EVENT_TASK, {"event_id": e}), tp, "recovery sweep") for e, tp in events]
    dispatches += [traced(Dispatch(RELEASE_HOLD_TASK, {"offer_id": o}), tp, "recovery sweep") for o, tp in holds]
    return dispatches


def expiring_holds(rt: Runtime, *, older_than_s: float) -> list[Dispatch]:
    """Release holds placed longer ago than ``older_than_s``, whatever their offer's state: an
    authorization Stripe lets lapse is worth nothing, and a released one is at least on record."""
    with rt.db.transaction() as conn:
        due = offers.holds_placed_before(conn, older_than_s, BATCH)
    return [Dispatch(RELEASE_HOLD_TASK, {"offer_id": offer_id, "reason": AUTHORIZATION_WINDOW}) for offer_id in due]
